"""The CPU smoke run of lesson 16's latency benchmark (aios.bench.chunked_prefill): it runs and reports."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_latency_benchmark_smoke_run(tiny_model_dir, tmp_path):
    """Both engines finish the small workload with the same output tokens, and the JSON has every percentile."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "aios.bench.chunked_prefill", "--model", str(tiny_model_dir),
                             "--device", "cpu", "--scale", "small", "--budget", "16", "--out", str(tmp_path)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "p99 ITL of short requests" in result.stdout
    record = json.loads((tmp_path / "chunked_prefill.json").read_text())
    assert record["chunked"]["output_tokens"] == record["prefill_first"]["output_tokens"] > 0
    assert record["chunked"]["steps"] > record["prefill_first"]["steps"], "the long prompts take several chunked steps"
    for run in ("prefill_first", "chunked"):
        assert set(record[run]["short_itl_ms"]) >= {"p50", "p90", "p99"}
        assert record[run]["short_ttft_ms"]["count"] == 8
