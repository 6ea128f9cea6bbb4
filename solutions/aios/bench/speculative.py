"""Lesson 19's GPU benchmark: decode speed with speculative decoding, beside its acceptance.

One engine holds the target (random weights of a preset's shape, ``load_format="dummy"``) and a
draft; the measurement swaps ``llm.speculator`` between runs (None: plain decoding), so every
variant decodes with the same weights, cache and CUDA graphs:

* **n-gram lookup** on a repetitive workload (prompts that repeat a phrase), k = 2 and 4;
* **a draft model at a controlled acceptance rate.** Random weights agree with nothing, so the
  target is made into a model a small draft can imitate: the residual outputs (``o_proj``,
  ``down_proj``) of every layer past the first ``draft_layers`` are zeroed. The target still runs
  (and pays for) all its layers, but computes what its first ``draft_layers`` layers compute. The
  draft is a checkpoint of ``draft_layers`` layers of the same shape holding those first layers,
  embeddings, norm and head, **plus Gaussian noise** of ``sigma`` times each weight's standard
  deviation: sigma sets the acceptance rate (0: the draft is exact).

For batch sizes 1, 4, 16 and 64 it times the decode phase (prefill left out) of requests of
``output_len`` tokens, and reports tokens/s, the speed-up over plain decoding, the acceptance rate
and the mean accepted length side by side. Speculation stops paying when the batch is large enough
that a step is compute-bound: verifying k + 1 tokens per sequence then costs about k + 1 decode
steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def config_only_checkpoint(preset: str, out_dir) -> Path:
    """config.json, generation config and tokenizer of ``preset``, no weights (the engine fills random ones)."""
    from aios.fixtures import tokenizer
    from aios.fixtures.make import write_model_files
    from aios.fixtures.presets import TOKENIZER_SIZES, build_config

    config = build_config(preset)
    tok_json = tokenizer.tokenizer_json(min(TOKENIZER_SIZES[preset], config["vocab_size"]))
    ids = tokenizer.special_token_ids(tok_json)
    config.update(bos_token_id=ids[tokenizer.ENDOFTEXT], eos_token_id=ids[tokenizer.IM_END])
    write_model_files(Path(out_dir), config, tok_json)
    return Path(out_dir)


def make_draft_checkpoint(target_dir, out_dir, draft_layers: int) -> Path:
    """A config-and-tokenizer folder of the target's shape with ``draft_layers`` layers (weights: dummy)."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (Path(target_dir) / name).is_file():
            shutil.copy(Path(target_dir) / name, out / name)
    config = json.loads((Path(target_dir) / "config.json").read_text())
    config["num_hidden_layers"] = draft_layers
    config["max_window_layers"] = draft_layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@torch.inference_mode()
def tie_target_to_draft(llm, draft_layers: int) -> dict:
    """Zero the residual outputs of the target's layers past ``draft_layers``; copy its first layers, embeddings,
    norm and head into the draft. Returns the draft's clean weights (to add noise to)."""
    target = llm.model_runner.model
    draft = llm.speculator.proposer.runner.model
    for index, layer in enumerate(target.model.layers):
        if index >= draft_layers:
            for name, param in layer.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    param.zero_()
    target_state = target.state_dict()
    clean = {}
    for name, tensor in draft.state_dict().items():
        tensor.copy_(target_state[name])
        clean[name] = tensor.clone()
    return clean


@torch.inference_mode()
def set_draft_noise(llm, clean: dict, sigma: float, seed: int = 0) -> None:
    """Draft weights = clean + sigma * std(weight) * N(0, 1), per tensor (norm weights stay clean)."""
    gen = torch.Generator(device=next(iter(clean.values())).device).manual_seed(seed)
    for name, tensor in llm.speculator.proposer.runner.model.state_dict().items():
        base = clean[name]
        if sigma == 0 or base.dim() < 2:
            tensor.copy_(base)
            continue
        noise = torch.randn(base.shape, generator=gen, device=base.device, dtype=torch.float32)
        tensor.copy_((base.float() + sigma * base.float().std() * noise).to(base.dtype))


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of random token ids."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(10, min(vocab, 2000), (length,), generator=gen).tolist() for _ in range(count)]


def timed_decode(llm, prompts, output_len: int) -> dict:
    """Decode-phase tokens/s of ``prompts`` (each ``output_len`` tokens, greedy), and the acceptance it saw."""
    from aios.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    seqs = [llm.add_request(list(p), params) for p in prompts]
    while any(seq.num_completion_tokens == 0 for seq in seqs):
        llm.step()
    before = dict(llm.speculator.stats.as_dict()) if llm.speculator else None
    torch.cuda.synchronize()
    start_tokens = sum(seq.num_completion_tokens for seq in seqs)
    start, steps = time.perf_counter(), 0
    while not llm.is_finished():
        llm.step()
        steps += 1
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(seq.num_completion_tokens for seq in seqs) - start_tokens
    row = {"batch": len(prompts), "decode_tokens": tokens, "seconds": seconds, "steps": steps,
           "tokens_per_s": tokens / seconds}
    if before is not None:
        after = llm.speculator.stats.as_dict()
        proposed = after["num_draft_tokens"] - before["num_draft_tokens"]
        accepted = after["num_accepted_tokens"] - before["num_accepted_tokens"]
        drafts = after["num_drafts"] - before["num_drafts"]
        row.update(acceptance_rate=accepted / proposed if proposed else 0.0,
                   mean_accepted_length=1 + accepted / drafts if drafts else 1.0)
    return row


def orbit_prompts(llm, count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Prompts of ``length`` tokens that the (bigram) target continues by repeating them: its own greedy orbits.

    With every layer's residual output zeroed, the target's next token is a function of the current
    token alone, so greedy text from any token runs into a cycle. Orbits that complete their cycle
    at least twice within ``length`` tokens are kept (the text the target writes next is a repetition
    of what is already there: n-gram lookup's best case); ``count`` prompts are taken from them, round robin.
    """
    from aios.sampling_params import SamplingParams

    starts = [[t] for t in torch.randint(10, vocab, (64,), generator=torch.Generator().manual_seed(seed)).tolist()]
    params = SamplingParams(temperature=0.0, max_tokens=length - 1, ignore_eos=True)
    orbits = [s + out["token_ids"] for s, out in zip(starts, llm.generate(starts, params, use_tqdm=False))]
    kept = []
    for orbit in orbits:
        seen = {}
        for index, token in enumerate(orbit):
            if token in seen:
                tail, period = seen[token], index - seen[token]
                if tail + 2 * period <= length:
                    kept.append(orbit)
                break
            seen[token] = index
    if not kept:
        raise RuntimeError(f"no greedy orbit of the bigram target cycles within {length} tokens; raise prompt_len")
    return [kept[i % len(kept)] for i in range(count)]


def run_speculative_benchmark(model_dir, work_dir, batch_sizes=(1, 4, 16, 64), output_len: int = 128,
                              prompt_len: int = 512, k_values=(2, 4), sigmas=(0.0, 0.01, 0.02, 0.05, 0.1),
                              draft_layers: int = 2, draft_k: int = 4, progress=print) -> dict:
    """Every variant at every batch size; returns {"rows": [...], "settings": {...}} (see the module docstring).

    ``max_num_seqs`` is max(batch) * (max k + 1): decode graphs are captured up to that many rows, so every
    verification (batch x (k + 1) rows) replays one.
    """
    from aios.llm import LLM
    from aios.spec.config import SpeculativeConfig
    from aios.spec.decoding import SpeculativeDecoder
    from aios.spec.ngram import NgramProposer

    draft_dir = make_draft_checkpoint(model_dir, Path(work_dir) / "draft", draft_layers)
    max_batch = max(batch_sizes)
    blocks = max_batch * -(-(prompt_len + output_len + 16) // 16) + 64
    rows_per_step = max_batch * (max(max(k_values), draft_k) + 1)
    llm = LLM(str(model_dir), load_format="dummy", max_num_seqs=rows_per_step,
              max_model_len=prompt_len + output_len + 16, max_num_batched_tokens=max(16384, prompt_len * max_batch),
              num_kvcache_blocks=blocks, enable_prefix_caching=False,
              speculative_config={"model": str(draft_dir), "num_speculative_tokens": draft_k})
    draft_decoder = llm.speculator
    vocab = llm.config.hf_config.vocab_size
    rows = []

    def measure(workload, method, prompts_for, speculator, **extra):
        llm.speculator = speculator
        timed_decode(llm, prompts_for(1), 8)  # warm-up: compile this variant's shapes
        for batch in batch_sizes:
            row = {"workload": workload, "method": method, **extra,
                   **timed_decode(llm, prompts_for(batch), output_len)}
            rows.append(row)
            progress(json.dumps(row))

    # 1. A draft at controlled acceptance: the target computes what its first layers compute.
    clean = tie_target_to_draft(llm, draft_layers)
    drafted = "random prompts, target = its first layers"
    measure(drafted, "none", lambda n: random_prompts(n, prompt_len, vocab, seed=n), None)
    for sigma in sigmas:
        llm.speculator = draft_decoder
        set_draft_noise(llm, clean, sigma)
        measure(drafted, "draft", lambda n: random_prompts(n, prompt_len, vocab, seed=n), draft_decoder,
                k=draft_k, sigma=sigma)
    # 2. n-gram lookup on text that repeats itself: the target as a bigram model, prompts its own orbits.
    tie_target_to_draft(llm, 0)
    llm.speculator = None
    orbits = orbit_prompts(llm, max_batch, prompt_len, vocab)
    repeated = "repetitive (own greedy orbit), bigram target"
    measure(repeated, "none", lambda n: orbits[:n], None)
    for k in k_values:
        spec = SpeculativeConfig("ngram", k, prompt_lookup_max=4, prompt_lookup_min=1)
        measure(repeated, "ngram", lambda n: orbits[:n], SpeculativeDecoder(spec, NgramProposer(k, 1, 4)), k=k)
    llm.speculator = draft_decoder
    add_speedups(rows)
    settings = {"model": str(model_dir), "draft_layers": draft_layers, "output_len": output_len,
                "prompt_len": prompt_len, "device": torch.cuda.get_device_name(), "dtype": str(llm.config.dtype),
                "max_num_seqs": rows_per_step, "orbit_prompts": len({tuple(o) for o in orbits})}
    llm.shutdown()
    return {"settings": settings, "rows": rows}


def add_speedups(rows: list[dict]) -> None:
    """Each row's tokens/s over the plain row of the same workload and batch size."""
    base = {(r["workload"], r["batch"]): r["tokens_per_s"] for r in rows if r["method"] == "none"}
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base[(row["workload"], row["batch"])]


def summary(result: dict) -> str:
    """The rows as a table: acceptance and speed-up side by side."""
    lines = [f"{'workload':<46} {'method':<7} {'k':>2} {'sigma':>5} {'batch':>5} {'tok/s':>9} {'speed-up':>8} "
             f"{'accept':>7} {'mean len':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['workload']:<46} {r['method']:<7} {r.get('k', ''):>2} {r.get('sigma', ''):>5} "
                     f"{r['batch']:>5} {r['tokens_per_s']:>9.1f} {r['speedup']:>8.2f} "
                     f"{r.get('acceptance_rate', float('nan')):>7.2f} {r.get('mean_accepted_length', float('nan')):>8.2f}")
    return "\n".join(lines)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="8b")
    parser.add_argument("--model", help="checkpoint folder (default: the preset's config; weights are never read)")
    parser.add_argument("--out", type=Path, default=Path("spec_bench"))
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--sigmas", default="0,0.01,0.02,0.05,0.1")
    parser.add_argument("--draft-layers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else config_only_checkpoint(args.preset, args.out / "target")
    result = run_speculative_benchmark(model_dir, args.out, tuple(int(b) for b in args.batch_sizes.split(",")),
                                       args.output_len, sigmas=tuple(float(s) for s in args.sigmas.split(",")),
                                       draft_layers=args.draft_layers)
    print(summary(result))
    (args.out / "speculative.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
