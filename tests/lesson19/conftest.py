"""Fixtures of lesson 19's tests: speculative engines over the tiny model, draft checkpoints, reference tokens."""

import random

import pytest
import torch

#: Lesson 19's engine on the CPU: lessons <= 16, the PyTorch attention path (fast on the CPU), small blocks.
ENGINE = {"attention_backend": "torch", "kvcache_block_size": 4, "max_model_len": 128, "max_num_seqs": 8}


@pytest.fixture(scope="module")
def make_llm(tiny_model_dir):
    """``make_llm(**options)``: an LLM on the tiny model, CPU, lessons <= 16 (prefill-first unless asked), cached
    per option set. ``speculative_config`` may be passed as a dict."""
    from aios import LLM
    from aios.config import features_up_to

    engines = {}

    def make(**options):
        options = {**features_up_to(16), "enable_chunked_prefill": False, **ENGINE, **options}
        key = repr(sorted(options.items()))
        if key not in engines:
            engines[key] = LLM(str(tiny_model_dir), device="cpu", **options)
        return engines[key]

    return make


@pytest.fixture(scope="session")
def draft_dir():
    """A different, smaller checkpoint with the tiny model's tokenizer: one layer, other random weights."""
    from aios.fixtures import cached_model

    return cached_model("tiny", seed=7, num_hidden_layers=1)


def ngram(k: int = 4, high: int = 4, low: int = 1) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": high, "prompt_lookup_min": low}


@pytest.fixture
def ngram_config():
    """``ngram_config(k, high, low)``: an n-gram speculative_config."""
    return ngram


def repetitive_requests(count: int, seed: int = 0, longest: int = 40):
    """``count`` prompts that repeat a random phrase (so n-gram lookup finds matches), each with its own
    max_tokens in 1-24 (greedy, EOS ignored)."""
    from aios import SamplingParams

    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        phrase = [rng.randrange(3, 490) for _ in range(rng.randint(1, 6))]
        prompt = (phrase * 20)[: rng.randint(1, longest)] + [rng.randrange(3, 490) for _ in range(rng.randint(0, 4))]
        prompts.append(prompt)
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24), ignore_eos=True) for _ in prompts]
    return prompts, params


@pytest.fixture
def requests():
    """``requests(count, seed)``: (prompts, greedy params) with repeated phrases."""
    return repetitive_requests


@pytest.fixture
def plain(make_llm):
    """``plain(prompts, params)``: the outputs of the engine without speculation (a roomy KV cache)."""

    def run(prompts, params):
        llm = make_llm(enable_prefix_caching=False, num_kvcache_blocks=512)
        return [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]

    return run


def finish(llm, max_steps: int = 3000) -> None:
    """Step ``llm`` until nothing is waiting or running; fail (instead of hanging) after ``max_steps`` steps."""
    for _ in range(max_steps):
        if llm.is_finished():
            return
        llm.step()
    assert llm.is_finished(), f"the engine did not finish in {max_steps} steps"


@pytest.fixture
def served():
    """``served(llm, prompts, params)``: each request's generated token ids, stepping with a bound."""

    def run(llm, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [llm.add_request(list(prompt), sp) for prompt, sp in zip(prompts, params)]
        finish(llm, 4 * sum(len(p) + sp.max_tokens for p, sp in zip(prompts, params)) + 200)
        return [seq.completion_token_ids for seq in seqs]

    return run


def assert_idle(llm):
    """Nothing waiting, nothing running, every KV block free."""
    assert llm.scheduler.is_finished(), "requests were left in the scheduler"
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks, (
        "KV blocks were left allocated: does the rollback release the reserved blocks?")


@pytest.fixture
def idle():
    return assert_idle


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one CPU thread: the tiny model's tensors gain nothing from more, and a busy machine loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
