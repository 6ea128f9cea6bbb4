"""Lesson 18's FP8 KV-cache plumbing (no lesson stubs it): the option's checks, the cache's size, checkpoint scales.

The quantizing store and the attention over an FP8 cache are lesson 18's code and are tested in
tests/lesson18/test_l18_kv_cache.py; here only what the engine does around them: which values
``kv_cache_dtype`` takes and the errors for the others, the block count from the memory budget
(one byte per element: twice the blocks of bfloat16), and the per-layer scales of a checkpoint.
"""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from aios.engine import model_runner
from aios.layers import fp8_kv_cache as fkv
from aios.llm import LLM

FP8 = torch.float8_e4m3fn


def test_unknown_kv_cache_dtype_is_a_clear_error(tiny_model_dir):
    """kv_cache_dtype other than 'auto' / 'fp8' is a ValueError naming the values and the README section."""
    for bad in ("int8", "e4m3", "bf16", None):
        with pytest.raises(ValueError, match="kv_cache_dtype must be 'auto' or 'fp8'.*The FP8 KV cache"):
            LLM(tiny_model_dir, kv_cache_dtype=bad)


def test_fp8_kv_cache_on_a_gpu_without_fp8_is_refused(monkeypatch):
    """A CUDA device below compute capability 8.9 (an A100 here, faked) gets a ValueError, not wrong output."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    config = SimpleNamespace(kv_cache_dtype="fp8", device="cuda:0", pipeline_parallel_size=1)
    with pytest.raises(ValueError, match="FP8 support.*A100"):
        fkv.check_kv_cache_dtype(config)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    fkv.check_kv_cache_dtype(config)  # an H100/H200: fine
    with pytest.raises(ValueError, match="pipeline"):
        fkv.check_kv_cache_dtype(SimpleNamespace(kv_cache_dtype="fp8", device="cpu", pipeline_parallel_size=2))


def test_fp8_kv_cache_runs_on_the_cpu(tiny_model_dir):
    """On the CPU the engine builds an e4m3 cache (torch emulates it), scales 1.0 without checkpoint scales."""
    llm = LLM(tiny_model_dir, kv_cache_dtype="fp8", device="cpu", max_model_len=64, num_kvcache_blocks=8)
    cache = llm.model_runner.kv_cache
    assert cache.k_cache.dtype == FP8 and cache.v_cache.dtype == FP8
    assert cache.k_scales == [1.0] * llm.config.hf_config.num_hidden_layers == cache.v_scales


def test_fp8_kv_cache_fits_twice_the_blocks_of_bf16(tiny_model_dir, monkeypatch):
    """The block count from a memory budget uses one byte per element: twice bf16's blocks, half the bytes each."""
    monkeypatch.setattr(model_runner, "CPU_KV_CACHE_BYTES", 1 << 20)  # a budget that binds
    options = dict(device="cpu", dtype="bfloat16", max_model_len=1024, max_num_seqs=256)
    engines = {kv: LLM(tiny_model_dir, kv_cache_dtype=kv, **options) for kv in ("auto", "fp8")}
    blocks = {kv: llm.config.num_kvcache_blocks for kv, llm in engines.items()}
    assert blocks["fp8"] == 2 * blocks["auto"], blocks
    caches = {kv: llm.model_runner.kv_cache for kv, llm in engines.items()}
    assert caches["fp8"].nbytes == caches["auto"].nbytes <= 1 << 20
    hf = engines["auto"].config.hf_config
    assert model_runner.kv_block_bytes(hf, 16, FP8) * 2 == model_runner.kv_block_bytes(hf, 16, torch.bfloat16)


def with_kv_scales(source, folder, scales: dict) -> str:
    """A copy of ``source`` whose model.safetensors also holds ``scales`` {tensor name: value} (scalar tensors)."""
    import shutil

    shutil.copytree(source, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.update({name: torch.tensor(value, dtype=torch.float32) for name, value in scales.items()})
    save_file(tensors, str(folder / "model.safetensors"))
    return str(folder)


def test_checkpoint_kv_scales_are_read_and_not_loaded_into_the_model(tiny_model_dir, tmp_path):
    """vLLM-style model.layers.N.self_attn.k_scale / v_scale: the FP8 cache takes them, the float cache ignores them."""
    folder = with_kv_scales(tiny_model_dir, tmp_path / "scaled", {
        "model.layers.0.self_attn.k_scale": 0.5, "model.layers.0.self_attn.v_scale": 0.25,
        "model.layers.1.self_attn.k_scale": 2.0})
    llm = LLM(folder, kv_cache_dtype="fp8", device="cpu", max_model_len=64, num_kvcache_blocks=8)
    cache = llm.model_runner.kv_cache
    assert cache.k_scales == [0.5, 2.0] and cache.v_scales == [0.25, 1.0]
    plain = LLM(folder, device="cpu", max_model_len=64, num_kvcache_blocks=8)  # no "unexpected tensor" error
    assert plain.model_runner.kv_cache.k_cache.dtype != FP8


def test_bad_checkpoint_kv_scale_is_named(tiny_model_dir, tmp_path):
    """A scale that is not positive is a ValueError naming the tensor."""
    folder = with_kv_scales(tiny_model_dir, tmp_path / "bad", {"model.layers.1.self_attn.v_scale": -1.0})
    with pytest.raises(ValueError, match="model.layers.1.self_attn.v_scale"):
        LLM(folder, kv_cache_dtype="fp8", device="cpu", max_model_len=64, num_kvcache_blocks=8)


def test_cli_takes_a_kv_cache_dtype(monkeypatch):
    """`aios bench --kv-cache-dtype fp8` reaches the engine; `aios serve --kv-cache-dtype fp8` is an engine option."""
    from aios import cli
    from aios.bench import throughput

    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--kv-cache-dtype", "fp8"]).kv_cache_dtype == "fp8"
    assert parser.parse_args(["serve"]).kv_cache_dtype is None  # the engine's default
    assert "kv_cache_dtype" in cli.SERVE_ENGINE_OPTIONS
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--kv-cache-dtype", "int8"])
    seen = {}

    def fake_engine(model_dir, **options):
        seen.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(throughput, "build_engine", fake_engine)
    args = parser.parse_args(["bench", "--model", ".", "--kv-cache-dtype", "fp8"])
    with pytest.raises(RuntimeError, match="stop here"):
        throughput.run_command(args)
    assert seen["kv_cache_dtype"] == "fp8"
