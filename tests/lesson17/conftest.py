"""Fixtures of lesson 17's tests: the same engine with the synchronous and the overlapped loop, prompts, bounds."""

import random

import pytest
import torch

#: Lesson 17's engine on the CPU (async_scheduling forced on: its default is off there): the PyTorch
#: attention path keeps the tests fast; the overlap logic is the same on any device.
ENGINE = {"attention_backend": "torch", "kvcache_block_size": 8, "max_model_len": 128}


@pytest.fixture(scope="module")
def make_llm(tiny_model_dir):
    """``make_llm(**options)``: an LLM on the tiny model, CPU, lessons <= 17 (overlap on), cached per option set."""
    from aios import LLM
    from aios.config import features_up_to

    engines = {}

    def make(**options):
        options = {**features_up_to(17), **ENGINE, **options}
        key = tuple(sorted((name, type(value).__name__, value) for name, value in options.items()))  # 1 is not True
        if key not in engines:
            engines[key] = LLM(str(tiny_model_dir), device="cpu", **options)
        return engines[key]

    return make


@pytest.fixture
def pair(make_llm):
    """``pair(**options)``: (synchronous engine, overlapped engine), otherwise the same options."""

    def make(**options):
        return make_llm(**options, async_scheduling=False), make_llm(**options, async_scheduling=True)

    return make


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@pytest.fixture
def prompts(random_prompt):
    """``prompts(n, seed, lengths=(3, 40))``: n random prompts of random lengths."""

    def make(n: int, seed: int = 0, lengths=(3, 40)):
        rng = random.Random(seed)
        return [random_prompt(rng.randint(*lengths), seed * 1000 + i) for i in range(n)]

    return make


@pytest.fixture
def greedy():
    """``greedy(max_tokens, **more)``: greedy SamplingParams (EOS ignored unless ``ignore_eos=False``)."""
    from aios import SamplingParams

    def make(max_tokens: int = 8, **more):
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, **{"ignore_eos": True, **more})

    return make


def finish(llm, max_steps: int = 2000) -> list:
    """Step ``llm`` until nothing is waiting or running; returns the per-step results ``(finished, num_tokens)``.
    Fails (instead of hanging) after ``max_steps`` steps."""
    steps = []
    for _ in range(max_steps):
        if llm.is_finished():
            return steps
        steps.append(llm.step())
    assert llm.is_finished(), (f"the engine did not finish in {max_steps} steps: does every step launch the "
                               "next batch and resolve the previous one?")
    return steps


@pytest.fixture
def finished():
    """``finished(llm)``: step until the engine is idle, failing after 2000 steps; returns what each step returned."""
    return finish


@pytest.fixture
def served():
    """``served(llm, prompts, params)``: [(completion token ids, finish_reason)] per request, stepping with a bound."""

    def run(llm, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [llm.add_request(list(prompt), sp) for prompt, sp in zip(prompts, params)]
        finish(llm, 4 * sum(len(p) + sp.max_tokens for p, sp in zip(prompts, params)) + 200)
        return [(seq.completion_token_ids, seq.finish_reason) for seq in seqs]

    return run


@pytest.fixture
def stop_ids():
    """``stop_ids(llm, prompts, params, how_many)``: token ids the engine often generates mid-way for these
    requests (run with EOS ignored), to serve as end-of-sequence ids: requests then stop at different steps."""
    from collections import Counter

    def pick(llm, prompts, params, how_many: int = 3) -> set[int]:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        counts = Counter(t for out in outputs for t in out["token_ids"][1:-1])
        return {t for t, _ in counts.most_common(how_many)}

    return pick


def assert_idle(llm):
    """Nothing waiting, nothing running, every KV block free."""
    assert llm.scheduler.is_finished(), "requests were left in the scheduler"
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks, (
        "KV blocks were left allocated: does a finished (or dropped) sequence free its blocks?")


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
