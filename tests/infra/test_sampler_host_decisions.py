"""The reference sampler takes no decision from a device tensor when it has the host settings (issue 15).

On a GPU, ``bool()``, ``int()``, ``.item()`` or ``.tolist()`` of a device tensor makes the host wait for the GPU,
which undoes lesson 17's overlap. Here, on the CPU, the sampler's tensor arguments (and the logits) are handed in
as ``DeviceOnly`` tensors, which refuse to become Python values: with ``host`` (what ``sampling_tensors`` passes)
nothing may try; without it the sampler falls back to reading them. What the CPU cannot show, blocking copies
to the device (``torch.tensor(list, device="cuda")``, indexing with a list), lesson 17's GPU test
(tests/lesson17/test_l17_gpu_sync.py) catches with torch.cuda.set_sync_debug_mode on a real device.
"""

import pytest
import torch

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.layers.sampler import Sampler, sampling_tensors


class HostRead(AssertionError):
    """A device tensor was turned into a Python value (on a GPU: a wait for the GPU)."""


class DeviceOnly(torch.Tensor):
    """A tensor standing for one on a GPU: results of operations on it are DeviceOnly too, and none of them
    may become a Python value."""

    def _refuse(self, *args, **kwargs):
        raise HostRead("a device tensor was read on the host (bool/int/float/item/tolist)")

    __bool__ = __int__ = __float__ = __index__ = item = tolist = numpy = _refuse


def device_only(tensors: dict) -> dict:
    """The sampler's keyword arguments with its tensors (not ``host``) as DeviceOnly views."""
    return {name: value.as_subclass(DeviceOnly) if type(value) is torch.Tensor else value
            for name, value in tensors.items()}


ROWS = [dict(temperature=0.0, top_k=3), dict(temperature=0.8, top_k=20, seed=0),
        dict(temperature=1.0, top_k=5, top_p=0.9), dict(temperature=0.7, top_k=50, top_p=0.95, seed=7),
        dict(temperature=1.0, top_p=0.9)]


@pytest.mark.parametrize("rows", [ROWS[:4], ROWS], ids=["top-k-candidates", "full-vocabulary"])
def test_with_host_settings_the_sampler_reads_no_device_tensor(rows):
    """Top-k, top-p, seeded and unseeded rows: no read with ``host``; the same batch without it does read (the
    check works), and both give the same tokens."""
    params = [SamplingParams(**row) for row in rows] * 4
    logits = torch.randn(len(params), 300) * 3
    tensors = sampling_tensors(params, list(range(len(params))), "cpu")
    torch.manual_seed(0)
    with_host = Sampler()(logits.as_subclass(DeviceOnly), **device_only(tensors))
    without = {name: value for name, value in tensors.items() if name != "host"}
    with pytest.raises(HostRead):
        Sampler()(logits.as_subclass(DeviceOnly), **device_only(without))
    torch.manual_seed(0)
    assert torch.equal(with_host.as_subclass(torch.Tensor), Sampler()(logits, **without))


class CheckedSampler:
    """The engine's sampler, called with DeviceOnly logits and settings; counts its calls."""

    def __init__(self, sampler):
        self.sampler, self.calls = sampler, 0

    def __call__(self, logits, **tensors):
        self.calls += 1
        assert tensors.get("host") is not None, "the engine should pass the host settings (sampling_tensors)"
        return self.sampler(logits.as_subclass(DeviceOnly), **device_only(tensors)).as_subclass(torch.Tensor)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "synchronous"])
def test_the_engine_samples_without_reading_device_tensors(tiny_model_dir, overlap):
    """The overlapped loop (sample_on_device) and the synchronous one (ModelRunner.sample) on a sampled batch:
    every sampler call decides from the host settings."""
    llm = LLM(str(tiny_model_dir), device="cpu", **{**features_up_to(17), "attention_backend": "torch",
                                                    "kvcache_block_size": 8, "max_model_len": 128,
                                                    "async_scheduling": overlap})
    checked = llm.model_runner.sampler = CheckedSampler(llm.model_runner.sampler)
    params = [SamplingParams(**row, max_tokens=6, ignore_eos=True) for row in ROWS]
    prompts = [[3 + i, 40 + i, 7, 99] for i in range(len(params))]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(out["token_ids"]) for out in outputs] == [6] * len(params)
    assert checked.calls >= 6
