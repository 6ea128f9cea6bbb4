"""Engine life cycle (no lesson stubs it): ``shutdown`` gives the model, KV cache and graphs back.

Several engines in one process (benchmarks, notebooks, the test suites) each size their KV cache
from the free GPU memory, so an engine that was shut down must not keep its tensors alive.
"""

import gc
import weakref

import pytest

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams

OPTIONS = {**features_up_to(13), "num_kvcache_blocks": 32, "max_model_len": 128}
GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def test_shutdown_releases_the_model_and_kv_cache(tiny_model_dir):
    """After shutdown() nothing holds the engine's ModelRunner (weights, KV cache) any more."""
    llm = LLM(str(tiny_model_dir), **OPTIONS)
    llm.generate([[3, 4, 5]], GREEDY, use_tqdm=False)
    runner = weakref.ref(llm.model_runner)
    cache = weakref.ref(llm.model_runner.kv_cache.k_cache)
    llm.shutdown()
    gc.collect()
    assert runner() is None and cache() is None


def test_generate_after_shutdown_says_so(tiny_model_dir):
    """Using an engine after shutdown() raises an error that says it was shut down; a second shutdown is harmless."""
    llm = LLM(str(tiny_model_dir), **OPTIONS)
    llm.shutdown()
    llm.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate([[3, 4, 5]], GREEDY, use_tqdm=False)


def test_a_teardown_step_that_hangs_is_given_up_with_a_warning():
    """Leaving an NCCL group runs under a deadline: a call that hangs gives a RuntimeWarning, not a hung process."""
    import threading
    import time

    from aios.engine.distributed import _run_with_deadline

    release = threading.Event()
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="did not finish in 0.2 s"):
        _run_with_deadline(release.wait, 0.2, "a stuck abort")
    assert time.monotonic() - start < 5
    release.set()
    finished = []
    _run_with_deadline(lambda: finished.append(True), 5.0, "a quick abort")
    assert finished == [True]
