"""Tests of ``python -m grader compare N``: per-function diffs against the reference, and the GPU part.

Each test works on its own learner tree in a temporary folder (the stubbed tree stubgen
generates, edited as a test needs), passed with ``--impl``; the repository's aios/ is never read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader import cli, compare, stubgen

ROOT = Path(__file__).resolve().parents[2]
ACTIVATION = "aios/layers/activation.py"


@pytest.fixture(scope="module")
def stubbed_files() -> dict[str, bytes]:
    """The learner tree stubgen generates (every lesson stubbed), in memory."""
    return stubgen.generate(ROOT / "solutions" / "aios")


@pytest.fixture
def learner_tree(tmp_path, stubbed_files) -> Path:
    """A fresh copy of the stubbed learner tree under ``tmp_path``; returns the folder holding aios/."""
    stubgen.write_tree(stubbed_files, tmp_path)
    return tmp_path


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["compare", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_reference_file(tree: Path, rel: str) -> None:
    shutil.copy(ROOT / "solutions" / rel, tree / rel)


def test_a_stubbed_function_is_reported_as_still_a_stub(capsys, learner_tree):
    code, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert code == 0
    assert f"=== {ACTIVATION}::silu_and_mul: still a stub" in out
    assert "5 still a stub" in out


def test_after_copying_the_reference_in_the_function_is_identical(capsys, learner_tree):
    copy_reference_file(learner_tree, ACTIVATION)
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"=== {ACTIVATION}::silu_and_mul: identical" in out
    assert "=== aios/layers/layernorm.py::rms_norm: still a stub" in out
    assert "1 identical, 4 still a stub" in out


def test_a_different_body_shows_both_versions(capsys, learner_tree):
    copy_reference_file(learner_tree, ACTIVATION)
    path = learner_tree / ACTIVATION
    source = path.read_text()
    assert "return F.silu(gate) * up" in source
    path.write_text(source.replace("return F.silu(gate) * up", "return gate * torch.sigmoid(gate) * up  # mine"))
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"=== {ACTIVATION}::silu_and_mul: differs from the reference" in out
    assert "-    return gate * torch.sigmoid(gate) * up  # mine" in out
    assert "+    return F.silu(gate) * up" in out
    assert " def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:" in out  # context kept
    assert "BEGIN SOLUTION" not in out


def test_layout_only_changes_are_not_a_difference(capsys, learner_tree):
    copy_reference_file(learner_tree, ACTIVATION)
    path = learner_tree / ACTIVATION
    path.write_text(path.read_text().replace("return F.silu(gate) * up", "# my comment\n    return F.silu(gate)*up"))
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"{ACTIVATION}::silu_and_mul: same code as the reference" in out


def test_a_missing_function_is_reported(capsys, learner_tree):
    path = learner_tree / ACTIVATION
    path.write_text(path.read_text().replace("def silu_and_mul(", "def renamed_silu_and_mul("))
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"{ACTIVATION}::silu_and_mul: missing: {ACTIVATION} has no function silu_and_mul" in out


def test_colour_output_has_the_same_content(capsys, learner_tree):
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--no-bench")
    assert f"{ACTIVATION}::silu_and_mul: still a stub" in out


def test_bad_lesson_number_is_a_clear_error(capsys):
    code, out, err = run_compare(capsys, "99", "--plain")
    assert code == 2
    assert "no lesson 99" in err
    assert "Traceback" not in out + err


def test_non_numeric_lesson_and_bad_impl_give_clear_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "four"])
    assert exit_info.value.code == 2 and "invalid int value" in capsys.readouterr().err
    code, _, err = run_compare(capsys, "1", "--impl", str(tmp_path / "nowhere"))
    assert code == 2 and "no aios/ package" in err


def test_gpu_part_is_skipped_without_cuda(capsys, monkeypatch, learner_tree):
    monkeypatch.setattr(compare, "cuda_available", lambda: False)
    code, out, _ = run_compare(capsys, "4", "--impl", str(learner_tree), "--plain")
    assert code == 0
    assert "GPU throughput comparison skipped: needs a CUDA GPU" in out


def test_lessons_off_the_ladder_have_no_benchmark(capsys, learner_tree):
    _, out, _ = run_compare(capsys, "2", "--impl", str(learner_tree), "--plain")
    assert "No benchmark for lesson 2" in out


def test_gpu_part_times_both_trees_and_prints_the_ratio(capsys, monkeypatch, learner_tree):
    calls = []

    def fake_time_engine(tree_parent, impl, lesson, out_dir):
        calls.append((Path(tree_parent), impl, lesson))
        return {"tokens_per_second": 50.0 if impl != "reference" else 200.0, "status": "ok"}

    monkeypatch.setattr(compare, "cuda_available", lambda: True)
    monkeypatch.setattr(compare, "_time_engine", fake_time_engine)
    _, out, _ = run_compare(capsys, "7", "--impl", str(learner_tree), "--plain")
    assert calls == [(learner_tree, str(learner_tree), 7), (ROOT / "solutions", "reference", 7)]
    assert "yours     50.0 tok/s" in out and "reference 200.0 tok/s" in out
    assert "yours / reference = x0.25" in out


LAYERNORM = "aios/layers/layernorm.py"


def test_renamed_locals_are_the_same_logic(capsys, learner_tree):
    """Only the names of local variables differ: 'same logic, different names', not 'differs'."""
    copy_reference_file(learner_tree, LAYERNORM)
    path = learner_tree / LAYERNORM
    source = path.read_text()
    for old, new in (("input_dtype", "orig_dtype"), ("variance", "mean_square"), ("normed", "y")):
        assert old in source
        source = source.replace(old, new)
    path.write_text(source)
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"=== {LAYERNORM}::rms_norm: same logic as the reference, different names" in out


def test_a_changed_expression_or_a_renamed_parameter_is_still_a_difference(capsys, learner_tree):
    """Casting the weight instead of the result changes the logic; parameters are part of the contract."""
    copy_reference_file(learner_tree, LAYERNORM)
    path = learner_tree / LAYERNORM
    source = path.read_text()
    path.write_text(source.replace("return weight * normed.to(input_dtype)", "return weight.to(input_dtype) * normed", 1))
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"=== {LAYERNORM}::rms_norm: differs from the reference" in out
    path.write_text(source.replace("def rms_norm(x: torch.Tensor", "def rms_norm(hidden: torch.Tensor", 1)
                    .replace("input_dtype = x.dtype\n    x32 = x.float()", "input_dtype = hidden.dtype\n    x32 = hidden.float()", 1))
    _, out, _ = run_compare(capsys, "1", "--impl", str(learner_tree), "--plain", "--no-bench")
    assert f"=== {LAYERNORM}::rms_norm: differs from the reference" in out
