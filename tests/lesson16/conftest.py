"""Fixtures of lesson 16's tests: chunked-prefill engines over the tiny model, prompts, reference tokens."""

import random

import pytest
import torch

#: Lesson 16's engine on the CPU: the PyTorch attention path (lesson 7) keeps the tests fast; one test runs Triton's.
ENGINE = {"attention_backend": "torch", "kvcache_block_size": 8, "max_model_len": 128}


@pytest.fixture(scope="module")
def make_llm(tiny_model_dir):
    """``make_llm(**options)``: an LLM on the tiny model (CPU unless ``device=`` says otherwise), lessons <= 16
    (chunked prefill on), cached per option set."""
    from aios import LLM
    from aios.config import features_up_to

    engines = {}

    def make(**options):
        options = {**features_up_to(16), **ENGINE, "device": "cpu", **options}
        key = tuple(sorted(options.items()))
        if key not in engines:
            engines[key] = LLM(str(tiny_model_dir), **options)
        return engines[key]

    return make


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@pytest.fixture
def greedy():
    """``greedy(max_tokens, **more)``: SamplingParams for greedy decoding (EOS ignored: every request runs its length)."""
    from aios import SamplingParams

    def make(max_tokens: int = 8, **more):
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, **{"ignore_eos": True, **more})

    return make


@pytest.fixture
def unchunked(make_llm):
    """``unchunked(prompts, params, **options)``: the token ids lesson 8's prefill-first engine generates for the
    same requests (``options`` as for ``make_llm``, e.g. ``device=``)."""

    def run(prompts, params, **options):
        llm = make_llm(**{"enable_chunked_prefill": False, "enable_prefix_caching": False,
                          "num_kvcache_blocks": 256, **options})
        return [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]

    return run


def finish(llm, max_steps: int = 2000) -> None:
    """Step ``llm`` until nothing is waiting or running; fail (instead of hanging) after ``max_steps`` steps."""
    for _ in range(max_steps):
        if llm.is_finished():
            return
        llm.step()
    assert llm.is_finished(), (f"the engine did not finish in {max_steps} steps: does every step advance "
                               "num_computed_tokens, and does each prompt get its chunks?")


@pytest.fixture
def served():
    """``served(llm, prompts, params)``: each request's generated token ids, stepping the engine with a bound on
    the number of steps (a scheduler that stops making progress fails the test instead of hanging it)."""

    def run(llm, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [llm.add_request(list(prompt), sp) for prompt, sp in zip(prompts, params)]
        finish(llm, 4 * sum(len(p) + sp.max_tokens for p, sp in zip(prompts, params)) + 200)
        return [seq.completion_token_ids for seq in seqs]

    return run


@pytest.fixture
def finished():
    """``finished(llm)``: step until the engine is idle, failing after 2000 steps."""
    return finish


def assert_idle(llm):
    """Nothing waiting, nothing running, every KV block free."""
    assert llm.scheduler.is_finished(), "requests were left in the scheduler"
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks, "KV blocks were left allocated"


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
