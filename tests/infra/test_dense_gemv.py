"""The bf16/fp16 decode GEMV of the dense linears (reference code, not an exercise: solutions/aios/layers/dense_gemv.py).

``dense_gemv`` equals ``F.linear`` for any shape, row count (1-8), tile, split count and split-K summing;
``dense_linear`` (what ``linear.dense_linear`` calls on a GPU for at most 8 rows) keeps ``F.linear`` unless
the first-call tuning of the shape chose a GEMV setting and the call is being captured in a CUDA graph (or
AIOS_DENSE_GEMV=eager), never tunes during capture, and can be switched off. On the CPU the kernel runs in
Triton's interpreter, so the shapes stay small; the GPU tests run the Qwen3-0.6B and 8B shapes in bf16,
eagerly and replayed from a CUDA graph.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.layers import dense_gemv, quant_gemv
from aios.layers.quant_gemv import GemvConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def layer(out_features, in_features, tokens, seed, dtype=torch.float32, bias=False):
    """(x [tokens, in], weight [out, in], bias [out] or None) on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_features, in_features, generator=gen) * 0.05).to(dtype)
    x = torch.randn(tokens, in_features, generator=gen).to(dtype)
    b = (torch.randn(out_features, generator=gen) * 0.1).to(dtype) if bias else None
    return x.to(DEVICE), w.to(DEVICE), None if b is None else b.to(DEVICE)


def reference(x, w, b):
    """x @ w.T + b in float32 on the CPU (not through F.linear, which some tests count)."""
    out = x.float().cpu() @ w.float().cpu().T
    return out if b is None else out + b.float().cpu()


@SETTINGS
@given(N=st.integers(1, 40), K=st.integers(1, 200), tokens=st.integers(1, 8), block_n=st.sampled_from([2, 4, 8]),
       block_k=st.sampled_from([16, 32, 64]), splits=st.sampled_from([None, 1, 2, 3, 5]), fused=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 99))
def test_dense_gemv_equals_f_linear(N, K, tokens, block_n, block_k, splits, fused, bias, seed):
    """dense_gemv == F.linear (float32) for ragged N and K, 1-8 rows (padded to 1, 2, 4 or 8 in the kernel),
    any tile, split count and split-K sum (second kernel or the tile's last program), with and without bias."""
    x, w, b = layer(N, K, tokens, seed, bias=bias)
    cfg = GemvConfig(block_n=block_n, block_k=block_k, splits=splits, fused_sum=fused)
    out = dense_gemv.dense_gemv(x, w, b, cfg).cpu()
    assert out.shape == (tokens, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_rounding_and_strided_input(dtype):
    """bf16 and fp16 in and out, within one rounding of the float32 result; a strided x (a column slice of a
    wider tensor, as a fused projection's output is) is read correctly."""
    x, w, b = layer(48, 256, 3, seed=1, dtype=dtype, bias=True)
    cfg = GemvConfig(block_n=8, block_k=64, splits=2, fused_sum=True)
    out = dense_gemv.dense_gemv(x, w, b, cfg)
    assert out.dtype == dtype
    ref = reference(x, w, b)
    torch.testing.assert_close(out.float().cpu(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
    wide = torch.randn(3, 300, dtype=dtype).to(DEVICE)
    strided = wide[:, 20:276]  # row stride 300
    torch.testing.assert_close(dense_gemv.dense_gemv(strided, w, None, cfg).float().cpu(),
                               reference(strided, w, None), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fused", [False, True])
def test_split_k_sums_are_deterministic(fused):
    """The split-K partial sums are added in a fixed order: two calls give the same bits, the tile counters are
    back at zero after each call."""
    x, w, b = layer(24, 320, 5, seed=2, bias=True)
    cfg = GemvConfig(block_n=8, block_k=32, splits=4, fused_sum=fused)
    first = dense_gemv.dense_gemv(x, w, b, cfg)
    assert torch.equal(first, dense_gemv.dense_gemv(x, w, b, cfg))
    torch.testing.assert_close(first.cpu(), reference(x, w, b), rtol=1e-4, atol=1e-4)
    if fused:
        assert quant_gemv._COUNTERS[str(first.device)].count_nonzero() == 0


def test_rows_class_pads_to_powers_of_two():
    """The kernel is compiled for 1, 2, 4 or 8 rows."""
    assert [dense_gemv.rows_class(m) for m in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]


def test_dense_gemv_rejects_bad_inputs():
    """Clear errors: no rows or more than GEMV_MAX_M, mismatched features, a tile that is not a power of two."""
    x, w, _ = layer(16, 32, 1, seed=3)
    with pytest.raises(ValueError, match="rows"):
        dense_gemv.dense_gemv(x[:0], w)
    with pytest.raises(ValueError, match="rows"):
        dense_gemv.dense_gemv(x.repeat(quant_gemv.GEMV_MAX_M + 1, 1), w)
    with pytest.raises(ValueError, match="features"):
        dense_gemv.dense_gemv(x[:, :16], w)
    with pytest.raises(ValueError, match="powers of two"):
        dense_gemv.dense_gemv(x, w, None, GemvConfig(block_n=6))


@pytest.fixture
def fresh_tuning(monkeypatch):
    """Empty tuning state, weights of any size considered, the switch on."""
    monkeypatch.setattr(quant_gemv, "_CHOICES", {})
    monkeypatch.setattr(quant_gemv, "TUNING_LOG", [])
    monkeypatch.setattr(dense_gemv, "_EAGER_DONE", set())
    monkeypatch.setattr(dense_gemv, "MIN_WEIGHTS", 1)
    monkeypatch.delenv(dense_gemv.SWITCH, raising=False)


def count_calls(monkeypatch):
    calls = []
    real_linear, real_gemv = F.linear, dense_gemv.dense_gemv
    monkeypatch.setattr(dense_gemv.F, "linear", lambda *a: calls.append("F.linear") or real_linear(*a))
    monkeypatch.setattr(dense_gemv, "dense_gemv", lambda *a: calls.append("gemv") or real_gemv(*a))
    return calls


def test_untuned_dispatch_keeps_f_linear(monkeypatch, fresh_tuning):
    """Without tuning (CPU, AIOS_GEMV_AUTOTUNE=0, or a CUDA graph being captured) dense_linear calls F.linear and
    remembers nothing, so a later eager call still tunes."""
    calls = count_calls(monkeypatch)
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: False)
    x, w, b = layer(32, 64, 2, seed=4, dtype=torch.bfloat16, bias=True)
    torch.testing.assert_close(dense_gemv.dense_linear(x, w, b), F.linear(x, w, b))
    assert calls[0] == "F.linear" and "gemv" not in calls and quant_gemv._CHOICES == {}


def test_tuned_choice_is_used_and_reused(monkeypatch, fresh_tuning):
    """A shape whose tuning chose a GEMV setting runs that setting on every later call where the GEMV runs
    (AIOS_DENSE_GEMV=eager here), with no second tuning; another row count is a shape of its own."""
    monkeypatch.setenv(dense_gemv.SWITCH, "eager")
    calls = count_calls(monkeypatch)
    x, w, _ = layer(32, 64, 1, seed=5, dtype=torch.bfloat16)
    cfg = GemvConfig(block_n=8, block_k=32)
    tuned = []

    def fake_tune(key, run_baseline, run_gemv, candidates, **tuning):
        tuned.append((key, tuning))
        return cfg

    monkeypatch.setattr(quant_gemv, "_tune", fake_tune)
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: True)
    for _ in range(2):
        torch.testing.assert_close(dense_gemv.dense_linear(x, w).float().cpu(), reference(x, w, None), rtol=1e-2,
                                   atol=1e-2)
    assert calls == ["gemv", "gemv"] and len(tuned) == 1
    key, tuning = tuned[0]
    assert key[:4] == ("dense", 1, 32, 64)
    assert tuning == {"tolerance": dense_gemv.TUNE_TOLERANCE, "baseline": dense_gemv.BASELINE}
    dense_gemv.dense_linear(x.repeat(3, 1), w)
    assert len(tuned) == 2 and tuned[1][0][1] == 3


def test_eager_calls_keep_f_linear_by_default(monkeypatch, fresh_tuning):
    """By default the tuned GEMV runs only where a CUDA graph is being captured: an eager call of a tuned shape
    is F.linear (the host's launch cost decides eager decode); AIOS_DENSE_GEMV=eager runs the GEMV there too."""
    x, w, _ = layer(32, 64, 1, seed=7, dtype=torch.bfloat16)
    runs_here = dense_gemv.gemv_runs_here
    monkeypatch.setattr(quant_gemv, "_tune", lambda *a, **k: GemvConfig(block_n=8, block_k=32))
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: True)
    calls = count_calls(monkeypatch)
    dense_gemv.dense_linear(x, w)
    assert calls == ["F.linear"] and len(quant_gemv._CHOICES) == 1  # tuned, not run
    monkeypatch.setattr(dense_gemv, "gemv_applies", lambda *a: pytest.fail("a tuned shape's eager call is a lookup"))
    dense_gemv.dense_linear(x, w)
    assert calls == ["F.linear"] * 2
    monkeypatch.setattr(dense_gemv, "gemv_applies", lambda *a: True)
    monkeypatch.setattr(dense_gemv, "gemv_runs_here", lambda x: True)  # as during a capture
    dense_gemv.dense_linear(x, w)
    assert calls == ["F.linear"] * 2 + ["gemv"]
    monkeypatch.setattr(dense_gemv, "gemv_runs_here", runs_here)
    assert not dense_gemv.gemv_runs_here(x)
    monkeypatch.setenv(dense_gemv.SWITCH, "eager")
    assert dense_gemv.gemv_runs_here(x)


@pytest.mark.parametrize("case", ["switched_off", "too_small", "float32", "too_many_rows", "grad"])
def test_dense_linear_falls_back_to_f_linear(monkeypatch, fresh_tuning, case):
    """F.linear, untouched, where the GEMV does not apply: AIOS_DENSE_GEMV=0, a small weight, float32, more than
    8 rows, an input that needs gradients."""
    calls = count_calls(monkeypatch)
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: True)
    monkeypatch.setattr(quant_gemv, "_tune", lambda *a, **k: pytest.fail("must not tune"))
    dtype = torch.float32 if case == "float32" else torch.bfloat16
    x, w, _ = layer(32, 64, 9 if case == "too_many_rows" else 1, seed=6, dtype=dtype)
    if case == "switched_off":
        monkeypatch.setenv(dense_gemv.SWITCH, "0")
    if case == "too_small":
        monkeypatch.setattr(dense_gemv, "MIN_WEIGHTS", 32 * 64 + 1)
    if case == "grad":
        x.requires_grad_(True)
    out = dense_gemv.dense_linear(x, w)
    assert calls == ["F.linear"]
    assert torch.equal(out, F.linear(x, w))


def test_tuning_keeps_f_linear_unless_a_setting_is_faster_and_agrees(monkeypatch, fresh_tuning):
    """quant_gemv's tuner with the dense baseline: F.linear is timed and logged as "F.linear"; a setting that is
    off by more than bf16 rounding allows (TUNE_TOLERANCE of the largest output) is never timed; the fastest
    agreeing one wins."""
    good, off = GemvConfig(block_n=4), GemvConfig(block_n=8)
    fake_us = {dense_gemv.BASELINE: 10.0, good.label: 6.0, off.label: 1.0}

    def fake_time(fn, flush, reps=10):
        return fake_us[fn().label]

    def output(label, scale):
        out = torch.ones(1, 8) * scale
        out.label = label
        return out

    monkeypatch.setattr(quant_gemv, "_time_us", fake_time)
    monkeypatch.setattr(torch, "empty", lambda *a, **k: torch.zeros(1))  # no flush buffer on the CPU
    choice = quant_gemv._tune(("dense", 1, 8, 4), lambda: output(dense_gemv.BASELINE, 1.0),
                              lambda cfg: output(cfg.label, 1.05 if cfg is off else 1.008), (good, off),
                              tolerance=dense_gemv.TUNE_TOLERANCE, baseline=dense_gemv.BASELINE)
    assert choice is good
    (entry,) = quant_gemv.TUNING_LOG
    assert entry["us"] == {dense_gemv.BASELINE: 10.0, good.label: 6.0, off.label: None}
    assert dense_gemv.dense_choices() == {"1 8 4": good.label}
    fake_us[good.label] = 12.0
    assert quant_gemv._tune(("dense", 2, 8, 4), lambda: output(dense_gemv.BASELINE, 1.0),
                            lambda cfg: output(cfg.label, 1.0), (good,), tolerance=dense_gemv.TUNE_TOLERANCE,
                            baseline=dense_gemv.BASELINE) == quant_gemv.DOT
    assert quant_gemv.TUNING_LOG[-1]["choice"] == dense_gemv.BASELINE


def test_linear_layers_on_the_cpu_call_f_linear(monkeypatch):
    """The lessons' layers on the CPU are unchanged: LinearBase / RowParallelLinear forward is F.linear, and
    dense_gemv is not even consulted."""
    from aios.layers import linear

    monkeypatch.setattr(dense_gemv, "dense_linear", lambda *a: pytest.fail("the CPU path must not reach dense_gemv"))
    layer_ = linear.RowParallelLinear(64, 32, tp_rank=0, tp_size=1)
    layer_.weight.data.normal_()
    x = torch.randn(1, 64)
    assert torch.equal(layer_(x), F.linear(x, layer_.weight))


# ------------------------------------------------------------------ GPU: Qwen3-0.6B and 8B shapes

SHAPES = [("0.6b qkv", 4096, 1024), ("0.6b o", 1024, 2048), ("0.6b gate_up", 6144, 1024), ("0.6b down", 1024, 3072),
          ("8b qkv", 6144, 4096), ("8b o", 4096, 4096), ("8b gate_up", 24576, 4096), ("8b down", 4096, 12288)]


def gpu_layer(N, K, tokens, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(N, K, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    x = torch.randn(tokens, K, device="cuda", generator=gen).to(torch.bfloat16)
    return x, w


def assert_within_bf16(out, x, w, label):
    ref = F.linear(x.float(), w.float())
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape, label
    assert (out.float() - ref).abs().max() <= 1e-2 * ref.abs().max(), label


@pytest.mark.gpu
@pytest.mark.parametrize("name,N,K", SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_every_setting_at_model_shapes(monkeypatch, name, N, K, tokens):
    """Every candidate and sweep setting, and the tuned dispatcher (run eagerly), equal the float32 F.linear
    within bf16 rounding at the 0.6B and 8B projections (3 rows: padded to 4)."""
    monkeypatch.setenv(dense_gemv.SWITCH, "eager")
    x, w = gpu_layer(N, K, tokens, seed=0)
    for cfg in dense_gemv.DENSE_CANDIDATES + dense_gemv.DENSE_SWEEP_EXTRA:
        assert_within_bf16(dense_gemv.dense_gemv(x, w, None, cfg), x, w, f"{name} {cfg.label}")
    assert_within_bf16(dense_gemv.dense_linear(x, w), x, w, f"{name} dispatch")


# Qwen3 layer shapes: (hidden, head_dim, heads, kv heads, intermediate).
LAYERS = {"0.6b": (1024, 128, 16, 8, 3072), "8b": (4096, 128, 32, 8, 12288)}


@pytest.mark.gpu
@pytest.mark.parametrize("model", sorted(LAYERS))
@pytest.mark.parametrize("tokens", [1, 4])
def test_tuned_linears_replay_in_a_cuda_graph(monkeypatch, model, tokens):
    """A decoder layer's four projections through LinearBase, tuned on an eager call (which itself runs F.linear),
    as the engine's warm-up does, then captured in one CUDA graph: every replay with new inputs equals the chosen
    kernels run eagerly (AIOS_DENSE_GEMV=eager) bit for bit, and F.linear within bf16 rounding; nothing is tuned
    during the capture; the tile counters are back at zero."""
    from aios.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

    hidden, head_dim, heads, kv_heads, inter = LAYERS[model]
    torch.manual_seed(0)
    layers = [QKVParallelLinear(hidden, head_dim, heads, kv_heads, tp_rank=0, tp_size=1),
              RowParallelLinear(heads * head_dim, hidden, tp_rank=0, tp_size=1),
              MergedColumnParallelLinear(hidden, [inter, inter], tp_rank=0, tp_size=1),
              RowParallelLinear(inter, hidden, tp_rank=0, tp_size=1)]
    for lin in layers:
        lin.to(device="cuda", dtype=torch.bfloat16)
        lin.weight.data.normal_(0, 0.02)
    inputs = [torch.zeros(tokens, lin.weight.shape[1], device="cuda", dtype=torch.bfloat16) for lin in layers]

    def forward():
        return [lin(x) for lin, x in zip(layers, inputs)]

    for x in inputs:
        x.normal_()
    for lin, x, out in zip(layers, inputs, forward()):  # tunes each shape, as capture_decode_graphs' warm-up does
        assert torch.equal(out, F.linear(x, lin.weight))  # eager: F.linear by default
    torch.cuda.synchronize()
    tuned = len(quant_gemv.TUNING_LOG)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = forward()
    assert len(quant_gemv.TUNING_LOG) == tuned
    for seed in range(3):
        torch.manual_seed(seed + 1)
        for x in inputs:
            x.normal_()
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv(dense_gemv.SWITCH, "eager")
        eager = forward()
        monkeypatch.delenv(dense_gemv.SWITCH)
        for lin, x, out, ref in zip(layers, inputs, outs, eager):
            assert torch.equal(out, ref)
            assert_within_bf16(out, x, lin.weight, str(lin))
    if quant_gemv._COUNTERS:
        assert quant_gemv._COUNTERS["cuda:0"].count_nonzero() == 0
    print("dense choices:", dense_gemv.dense_choices())
