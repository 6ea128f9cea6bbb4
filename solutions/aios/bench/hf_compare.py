"""``aios bench --compare-hf N``: the engine beside transformers' own continuous batching, same prompts.

Hugging Face transformers ships a continuous-batching generator (``model.generate_batch``, paged
attention). It takes one ``GenerationConfig`` for every request, so the comparison workload is the
first ``N`` prompts of the headline workload with every output fixed at their mean output length
(EOS ignored). Both engines run exactly that workload, with random weights of the same shape (for
transformers ``from_config``: speed does not depend on the values), after a warm-up, and the ratio
is printed side by side. Transformers is slow enough that ``N`` is kept small (default 32); the
output says so.
"""

from __future__ import annotations

import inspect
import time

import torch

from aios.bench.ladder import make_workload, synchronize

#: Requests of the comparison when ``--compare-hf`` is given without a number.
DEFAULT_HF_REQUESTS = 32


def comparison_workload(num_requests: int, vocab_size: int, seed: int = 0) -> tuple[list[list[int]], int]:
    """The first ``num_requests`` prompts of the headline workload and their mean output length."""
    from aios.bench.throughput import HEADLINE_WORKLOAD

    workload = make_workload(num_requests, HEADLINE_WORKLOAD["prompt_len"], HEADLINE_WORKLOAD["output_len"],
                             vocab_size, seed)
    mean_output = round(sum(workload.output_lens) / len(workload.output_lens))
    return [list(p) for p in workload.prompts], mean_output


def engine_on(llm, prompts: list[list[int]], output_len: int) -> dict:
    """The engine's output tok/s on ``prompts``, each generating exactly ``output_len`` tokens."""
    from aios.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    from aios.bench.throughput import timed_generate

    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    outputs, seconds = timed_generate(llm, prompts, params)
    tokens = sum(len(out["token_ids"]) for out in outputs)
    return {"output_tokens": tokens, "seconds": round(seconds, 3), "output_tokens_per_second": round(tokens / seconds, 1)}


def _generate_batch(model, prompts, config, **options):
    """``model.generate_batch`` with only the keyword options this transformers version accepts."""
    accepted = inspect.signature(model.generate_batch).parameters
    return model.generate_batch(inputs=prompts, generation_config=config,
                                **{name: value for name, value in options.items() if name in accepted})


def transformers_on(model_dir, prompts: list[list[int]], output_len: int, device: str, dtype: torch.dtype) -> dict:
    """transformers' continuous batching (``generate_batch``) on the same prompts, random weights of the shape."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    fixed = GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    warm = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    _generate_batch(model, prompts[:2], warm, progress_bar=False)
    synchronize(device)
    start = time.perf_counter()
    outputs = _generate_batch(model, prompts, fixed, progress_bar=False, warmup=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(out.generated_tokens) for out in outputs.values())
    del model
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return {"output_tokens": tokens, "seconds": round(seconds, 3), "output_tokens_per_second": round(tokens / seconds, 1)}


def compare_with_transformers(llm, model_dir, num_requests: int, seed: int = 0) -> dict:
    """Both engines on the comparison workload; returns their figures and the ratio (aios / transformers).

    Shuts ``llm`` down after its run (transformers needs the memory).
    """
    config = llm.config
    prompts, output_len = comparison_workload(num_requests, config.hf_config.vocab_size, seed)
    output_len = max(1, min(output_len, config.max_model_len - max(map(len, prompts))))  # both stop at the same length
    ours = engine_on(llm, prompts, output_len)
    llm.shutdown()  # the engine's KV cache holds most of the GPU: give it back before transformers allocates its own
    try:
        theirs = transformers_on(model_dir, prompts, output_len, config.device, config.dtype)
    except Exception as error:  # noqa: BLE001 - an older or newer transformers: say why, keep the engine's figure
        return {"requests": len(prompts), "output_len": output_len, "aios": ours,
                "transformers_error": f"{type(error).__name__}: {error}"}
    ratio = ours["output_tokens_per_second"] / theirs["output_tokens_per_second"]
    return {"requests": len(prompts), "output_len": output_len, "aios": ours, "transformers": theirs,
            "ratio": round(ratio, 2)}


def summary(result: dict) -> str:
    """Two lines for the terminal: the workload, then both figures and the ratio (or why transformers failed)."""
    head = (f"beside transformers' continuous batching (generate_batch): the first {result['requests']} requests "
            f"of the workload, every output fixed at {result['output_len']} tokens (kept short: transformers is slow)")
    ours = f"aios {result['aios']['output_tokens_per_second']:,.0f} tok/s"
    if "transformers" not in result:
        return f"{head}\n  {ours}; transformers could not run: {result['transformers_error']}"
    theirs = result["transformers"]["output_tokens_per_second"]
    return f"{head}\n  {ours}, transformers {theirs:,.0f} tok/s: aios/transformers x{result['ratio']:.1f}"
