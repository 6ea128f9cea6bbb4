"""Tests of the throughput ladder (``python -m aios.bench.ladder --ladder``): a CPU smoke run.

The ladder runs the reference engine (``solutions/``) in a subprocess on the tiny model with
``--scale small``: every stage must run and land in table.md, ladder.json and ladder.png.
The GPU figures themselves come from scripts/gpu/ladder.sh.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALL_STAGES = [*range(3, 14), 16, 17, 18]


def run_ladder_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m aios.bench.ladder ARGS`` against the reference tree, output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "aios.bench.ladder", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tiny_model_dir, tmp_path_factory):
    """One CPU smoke run of the whole ladder; stage 3's outputs cut to 2 tokens to exercise the note."""
    out = tmp_path_factory.mktemp("ladder")
    started = time.perf_counter()
    result = run_ladder_cli("--ladder", "--model", str(tiny_model_dir), "--device", "cpu", "--scale", "small",
                            "--single-budget", "0.2", "--no-cache-output", "2", "--out", str(out))
    return result, out, time.perf_counter() - started


def test_smoke_run_succeeds_and_prints_every_stage_and_ratio(smoke_run):
    result, _, _ = smoke_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for stage in ALL_STAGES:
        assert f"stage {stage:>2} " in result.stdout
    ratio_lines = [line for line in result.stdout.splitlines() if " / stage " in line]
    assert len(ratio_lines) == len(ALL_STAGES) - 1


def test_json_has_one_measured_row_per_stage(smoke_run):
    _, out, _ = smoke_run
    record = json.loads((out / "ladder.json").read_text())
    rows = record["stages"]
    assert [row["stage"] for row in rows] == ALL_STAGES
    for row in rows:
        assert row["status"] == "ok", row
        assert row["output_tokens"] > 0 and row["tokens_per_second"] > 0
        assert row["tokens_per_second"] == pytest.approx(row["output_tokens"] / row["seconds"], rel=0.01)
    assert [r["stage"] for r in record["ratios"]] == ALL_STAGES[1:]
    assert record["device"] == "cpu" and record["workload"]["num_requests"] == 2


def test_table_lists_every_stage_and_the_shrunk_outputs(smoke_run):
    _, out, _ = smoke_run
    table = (out / "table.md").read_text()
    for stage in ALL_STAGES:
        assert f"\n| {stage} | " in table
    assert "outputs cut to 2 tokens" in table
    assert "CUDA graphs need a GPU: ran eager" in table


def test_png_is_a_valid_chart(smoke_run):
    _, out, _ = smoke_run
    data = (out / "ladder.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 200
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"


def test_smoke_run_is_quick(smoke_run):
    _, _, seconds = smoke_run
    assert seconds < 120, f"the CPU smoke ladder took {seconds:.0f} s"


@pytest.mark.parametrize("args, message", [
    (["--ladder", "--stages", "2-20"], "stages are 3-13"),
    (["--ladder", "--scale", "huge"], "expected a positive number"),
    (["--ladder", "--model", "/nonexistent/model"], "holds no checkpoint"),
])
def test_bad_arguments_give_a_clear_error(args, message):
    result = run_ladder_cli(*args, "--device", "cpu", timeout=60)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_stage_is_reported_and_skipped_in_the_ratios():
    from aios.bench.ladder import LadderRow, ladder_table, stage_ratios

    rows = [LadderRow(7, "static batching", "x", requests=4, output_tokens=50, seconds=1.0),
            LadderRow(8, "continuous batching", "y", status="timed out (stopped after 5 s)"),
            LadderRow(9, "Triton attention", "z", requests=4, output_tokens=300, seconds=1.0)]
    assert stage_ratios(rows) == []
    header = {"device": "cpu", "model": "m", "load_format": "dummy", "workload_text": "w", "max_num_seqs": 4,
              "rounds_text": "r"}
    table = ladder_table(rows, header)
    assert "timed out (stopped after 5 s)" in table
    assert "| 50.0 |" in table and "| 300 |" in table


def test_time_limit_stops_a_slow_stage():
    from aios.bench.ladder import StageTimeout, time_limit

    started = time.perf_counter()
    with pytest.raises(StageTimeout):
        with time_limit(0.2):
            time.sleep(5)
    assert time.perf_counter() - started < 2


def test_a_stage_past_its_timeout_is_reported_and_the_run_fails(tiny_model_dir, tmp_path):
    result = run_ladder_cli("--ladder", "--model", str(tiny_model_dir), "--device", "cpu", "--scale", "small",
                            "--stages", "7-8", "--stage-timeout", "0.01", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = json.loads((tmp_path / "ladder.json").read_text())["stages"]
    assert [row["stage"] for row in rows] == [7, 8]
    assert all(row["status"].startswith("timed out") and row["tokens_per_second"] is None for row in rows)
    assert "timed out" in (tmp_path / "table.md").read_text()
