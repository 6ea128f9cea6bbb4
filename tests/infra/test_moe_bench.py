"""The CPU smoke run of lesson 20's measurements (aios.bench.moe): the kernel table and the headline run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_moe_benchmark_smoke_run(tmp_path):
    """--kernel --headline --device cpu: fused and loop agree on tiny-moe's layer shape; the engine generates."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1",
           "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "aios.bench.moe", "--kernel", "--headline", "--device", "cpu",
                             "--out", str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "moe.json").read_text())
    assert [row["tokens"] for row in record["kernel"]] == [4, 16]
    assert all(row["max_abs_difference"] < 1e-4 and row["fused_ms"] > 0 and row["loop_ms"] > 0
               for row in record["kernel"])
    assert record["headline"]["preset"] == "tiny-moe" and record["headline"]["output_tokens"] > 0
