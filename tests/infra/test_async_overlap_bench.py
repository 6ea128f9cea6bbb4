"""Lesson 17's benchmark module (aios.bench.async_overlap): the idle-time arithmetic, and a CPU smoke run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "solutions"))


def test_gpu_idle_per_step_counts_overlapping_kernels_once():
    """Idle time = the span minus the union of the kernels' intervals (overlaps count once), per step."""
    from aios.bench.async_overlap import gpu_idle_per_step

    idle, busy = gpu_idle_per_step([(0, 10), (5, 12), (20, 30), (30, 31), (40, 50)], steps=2)
    assert idle == (50 - 12 - 11 - 10) / 2
    assert abs(busy - 33 / 50) < 1e-9
    assert gpu_idle_per_step([], 3) == (0.0, 0.0)


def test_overlap_benchmark_smoke_run(tiny_model_dir, tmp_path):
    """Both loops finish the small workload with the same output tokens; the JSON has every figure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "aios.bench.async_overlap", "--model", str(tiny_model_dir),
                             "--device", "cpu", "--scale", "small", "--out", str(tmp_path)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "async/sync" in result.stdout
    record = json.loads((tmp_path / "async_overlap.json").read_text())
    assert record["sync"]["throughput"]["output_tokens"] == record["async"]["throughput"]["output_tokens"] > 0
    assert record["sync"]["batch1"]["output_tokens"] == record["async"]["batch1"]["output_tokens"] > 0
    assert (tmp_path / "timeline_async.json").is_file() and (tmp_path / "timeline_sync.json").is_file()
