"""Tests of ``aios.fixtures``: offline Qwen3 checkpoints that Hugging Face can load.

All fast and CPU-only: the big presets are checked through their configs and
tensor names/shapes on the ``meta`` device, never by writing their weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from safetensors import safe_open

import aios
from aios import fixtures
from aios.fixtures import PRESETS, TOKENIZER_SIZES, make_model

# Published Qwen3 shapes, restated independently of aios.fixtures.presets:
# hidden, intermediate, layers, attention heads, kv heads, tied embeddings.
PUBLISHED_QWEN3 = {
    "0.6b": (1024, 3072, 28, 16, 8, True),
    "1.7b": (2048, 6144, 28, 16, 8, True),
    "4b": (2560, 9728, 36, 32, 8, True),
    "8b": (4096, 12288, 36, 32, 8, False),
    "14b": (5120, 17408, 40, 40, 8, False),
    "32b": (5120, 25600, 64, 64, 8, False),
}
PEAKED_MEDIAN_TOP1 = 0.75  # the bound stated in aios/fixtures/weights.py is "about 0.8 or more"


def _package_parent() -> str:
    """The folder holding the ``aios`` package under test, for subprocesses."""
    return str(Path(aios.__file__).resolve().parent.parent)


def _run_python(args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` importing the same ``aios`` as this test."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([_package_parent(), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model("tiny", tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return make_model("small", tmp_path_factory.mktemp("small"))


# ---------------------------------------------------------------- files and config


def test_writes_the_hugging_face_files(tiny_dir):
    """make_model writes config, generation config, tokenizer files and model.safetensors."""
    names = {p.name for p in tiny_dir.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_config_has_the_qwen3_fields(tiny_dir):
    """config.json names the Qwen3 architecture and carries every field an engine reads."""
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    for key in ("head_dim", "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "dtype", "torch_dtype"):
        assert key in config, key
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": config["rope_theta"]}
    assert config["dtype"] == config["torch_dtype"] == "float32"


def test_safetensors_header_is_valid(tiny_dir):
    """The hand-written safetensors file has an 8-byte aligned header and the declared tensors."""
    raw = (tiny_dir / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0
    header = json.loads(raw[8 : 8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}
    end = max(entry["data_offsets"][1] for entry in header.values())
    assert 8 + header_len + end == len(raw)
    tensors = _load_tensors(tiny_dir)
    assert set(tensors) == set(header)
    assert all(t.dtype == torch.float32 for t in tensors.values())


# ---------------------------------------------------------------- Hugging Face loads it


def test_transformers_loads_tiny_with_every_weight(tiny_dir):
    """Qwen3ForCausalLM.from_pretrained loads the tiny fixture offline, with no missing or extra weights."""
    from transformers import Qwen3ForCausalLM

    model, info = Qwen3ForCausalLM.from_pretrained(tiny_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32
    tensors = _load_tensors(tiny_dir)
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    assert "lm_head.weight" not in tensors  # tied, like Qwen3-0.6B
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("preset, overrides", [("tiny", {"tie_word_embeddings": False}), ("small", {})])
def test_untied_checkpoints_load_with_their_lm_head(tmp_path, preset, overrides):
    """Untied checkpoints store lm_head.weight separately and transformers loads it."""
    from transformers import Qwen3ForCausalLM

    folder = make_model(preset, tmp_path, **overrides)
    tensors = _load_tensors(folder)
    assert "lm_head.weight" in tensors
    model, info = Qwen3ForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_tiny_forward_is_finite_and_fast(tiny_dir):
    """A 32-token forward pass of tiny gives finite logits over the whole vocabulary."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.arange(32).unsqueeze(0) * 7 % 400
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 32, PRESETS["tiny"]["vocab_size"])
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- weights: determinism and shape of the distribution


def test_same_seed_gives_identical_bytes(tmp_path):
    """The same preset and seed write byte-identical files."""
    a = make_model("tiny", tmp_path / "a", seed=5)
    b = make_model("tiny", tmp_path / "b", seed=5)
    assert _file_bytes(a) == _file_bytes(b)


def test_different_seeds_give_different_weights_same_tokenizer(tmp_path):
    """Another seed changes every weight matrix but not the tokenizer."""
    a, b = make_model("tiny", tmp_path / "a", seed=0), make_model("tiny", tmp_path / "b", seed=1)
    ta, tb = _load_tensors(a), _load_tensors(b)
    for name in ta:
        assert not torch.equal(ta[name], tb[name]), name
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_fewer_layers_keep_the_same_layer_weights(tmp_path, tiny_dir):
    """Overriding num_hidden_layers keeps layer 0 identical (each tensor has its own seed)."""
    one = _load_tensors(make_model("tiny", tmp_path, num_hidden_layers=1))
    full = _load_tensors(tiny_dir)
    assert not any(name.startswith("model.layers.1.") for name in one)
    for name, tensor in one.items():
        assert torch.equal(tensor, full[name]), name


def test_norm_weights_are_not_all_ones(tiny_dir):
    """Norm weights are jittered, so an engine that ignores them gets different outputs."""
    tensors = _load_tensors(tiny_dir)
    names = ("model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight", "model.norm.weight")
    for name in names:
        assert tensors[name].std() > 0.05 * tensors[name].mean().abs(), name


def test_rows_past_the_tokenizer_are_zero(tiny_dir):
    """Embedding rows of ids the tokenizer never produces are zero, so they are never predicted."""
    embed = _load_tensors(tiny_dir)["model.embed_tokens.weight"]
    used = TOKENIZER_SIZES["tiny"]
    assert embed.shape[0] == PRESETS["tiny"]["vocab_size"] > used
    assert (embed[used:] == 0).all()
    assert (embed[:used].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("preset, seed", [("tiny", 0), ("tiny", 1), ("small", 0)])
def test_next_token_distributions_are_peaked(tmp_path, preset, seed):
    """Random fixtures predict one clear winner, so greedy comparisons do not flip on rounding noise."""
    stats = fixtures.peakedness(make_model(preset, tmp_path, seed=seed))
    assert stats["top1_prob_median"] > PEAKED_MEDIAN_TOP1, stats
    assert stats["top1_prob_above_half"] > 0.7, stats
    assert stats["gap_median"] > 1.5, stats
    assert stats["repeat_rate"] < 0.1, stats  # the prediction is rarely just the input token


def test_sharded_checkpoint_loads(tmp_path, monkeypatch, tiny_dir):
    """Beyond MAX_SHARD_BYTES the weights are split into numbered shards plus an index that transformers reads."""
    from transformers import Qwen3ForCausalLM

    from aios.fixtures import safetensors_writer

    monkeypatch.setattr(safetensors_writer, "MAX_SHARD_BYTES", 100_000)
    folder = make_model("tiny", tmp_path)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    tensors = _load_tensors(folder)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    unsharded = _load_tensors(tiny_dir)
    assert tensors.keys() == unsharded.keys()
    assert all(torch.equal(tensors[k], unsharded[k]) for k in tensors)
    model, info = Qwen3ForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_make_model_replaces_stale_shards(tmp_path, monkeypatch):
    """Writing a single-file checkpoint over a sharded one removes the old shards and index."""
    from aios.fixtures import safetensors_writer

    monkeypatch.setattr(safetensors_writer, "MAX_SHARD_BYTES", 100_000)
    make_model("tiny", tmp_path)
    monkeypatch.undo()
    make_model("tiny", tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_and_stays_in_vocab(tiny_dir):
    """AutoTokenizer loads offline, round-trips any text, and every id is < vocab_size."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    assert len(tok) == TOKENIZER_SIZES["tiny"] <= PRESETS["tiny"]["vocab_size"]
    for text in ["Hello world!", "Bread needs flour, water, salt and yeast.",
                 "Unicode: café, 中文, emoji 🙂\n\n\ttabs  and  spaces 12345", ""]:
        ids = tok.encode(text)
        assert ids == raw.encode(text).ids  # transformers rebuilds the same pipeline
        assert tok.decode(ids) == text
        assert all(0 <= i < TOKENIZER_SIZES["tiny"] for i in ids)
    assert tok.encode("hello")[0] != tok.bos_token_id  # Qwen adds no BOS


def test_special_tokens_follow_qwen(tiny_dir):
    """<|endoftext|>, <|im_start|>, <|im_end|> are single special tokens at the end of the vocabulary."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    n = TOKENIZER_SIZES["tiny"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": n - 3, "<|im_start|>": n - 2, "<|im_end|>": n - 1}
    assert tok.encode("<|im_start|>user<|im_end|>")[0] == n - 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["eos_token_id"] == n - 1 and config["bos_token_id"] == n - 3
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [n - 1, n - 3]


def test_chat_template_is_chatml(tiny_dir):
    """apply_chat_template writes ChatML and opens the assistant turn with add_generation_prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    without = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert without == text.removesuffix("<|im_start|>assistant\n")


def test_tokenizer_training_is_deterministic_across_processes(tiny_dir):
    """A fresh process trains byte-identical tokenizer.json (no hash-order or thread dependence)."""
    code = "import sys; from aios.fixtures.tokenizer import tokenizer_json; sys.stdout.write(tokenizer_json(500))"
    result = _run_python(["-c", code], env={"PYTHONHASHSEED": "123", "RAYON_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (tiny_dir / "tokenizer.json").read_text()


# ---------------------------------------------------------------- presets and overrides


@pytest.mark.parametrize("preset", sorted(PUBLISHED_QWEN3))
def test_real_presets_match_published_qwen3(preset):
    """The real presets carry the published Qwen3 shapes and constants."""
    hidden, inter, layers, heads, kv_heads, tied = PUBLISHED_QWEN3[preset]
    config = fixtures.build_config(preset)
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (hidden, inter, layers)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (heads, kv_heads)
    assert config["tie_word_embeddings"] is tied
    assert config["head_dim"] == 128 and config["vocab_size"] == 151936
    assert config["max_position_embeddings"] == 40960 and config["rope_theta"] == 1_000_000
    assert config["rms_norm_eps"] == 1e-6 and config["dtype"] == "bfloat16"


@pytest.mark.parametrize("preset", [name for name, shape in PRESETS.items() if shape.get("model_type") != "qwen3_moe"])
def test_tensor_names_and_shapes_match_transformers(preset):
    """For every dense preset (MoE ones: tests/infra/test_moe_fixtures.py), the tensors we would write are exactly Qwen3ForCausalLM's parameters (checked on 'meta')."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from aios.fixtures.weights import tensor_specs

    config = fixtures.build_config(preset)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**config))
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}  # tied lm_head is listed once
    assert {s.name: s.shape for s in tensor_specs(config)} == expected


def test_real_shape_with_one_layer_loads(tmp_path):
    """0.6b with num_hidden_layers=1 writes bf16 weights of the real shapes that transformers loads."""
    from transformers import AutoModelForCausalLM

    folder = make_model("0.6b", tmp_path, num_hidden_layers=1, progress=False)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.shape == (151936, 1024)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits.float()
    assert torch.isfinite(logits).all()
    assert (logits.argmax(-1) < TOKENIZER_SIZES["0.6b"]).all()  # unused rows are never predicted


def test_overrides_change_config_and_tokenizer_limits(tmp_path):
    """Overrides replace config fields; derived fields follow them."""
    folder = make_model("tiny", tmp_path, max_position_embeddings=64, num_hidden_layers=1, rope_theta=10000.0)
    config = json.loads((folder / "config.json").read_text())
    assert config["max_position_embeddings"] == 64 and config["num_hidden_layers"] == 1
    assert config["max_window_layers"] == 1
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 64


def test_small_vocab_override_shrinks_the_tokenizer(tmp_path):
    """With vocab_size below the preset's tokenizer size, the tokenizer shrinks to fit."""
    from transformers import AutoTokenizer

    folder = make_model("tiny", tmp_path, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 300
    assert max(tok.encode("The quick brown fox jumps over the lazy dog.")) < 300


def test_bad_preset_and_overrides_are_rejected(tmp_path):
    """Unknown presets and override names fail with messages that list the valid choices."""
    with pytest.raises(ValueError, match="tiny, small, 0.6b"):
        make_model("huge", tmp_path)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        make_model("tiny", tmp_path, num_layers=1)
    with pytest.raises(ValueError, match="multiple"):
        make_model("tiny", tmp_path, num_key_value_heads=3)


# ---------------------------------------------------------------- cache


def test_cached_model_builds_once(tmp_path, monkeypatch):
    """cached_model makes the checkpoint under $AIOS_CACHE/models once and then reuses it."""
    monkeypatch.setenv("AIOS_CACHE", str(tmp_path))
    first = fixtures.cached_model("tiny", seed=2)
    assert first == tmp_path / "models" / f"tiny-s2-v{fixtures.FIXTURE_VERSION}"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert fixtures.cached_model("tiny", seed=2) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "models").iterdir()] == [first.name]  # no temporary folders left


def test_cached_model_is_safe_across_processes(tmp_path):
    """Several processes asking for the same cached model at once all get one complete folder."""
    code = "from aios.fixtures import cached_model; print(cached_model('tiny', seed=7))"
    env = {**os.environ, "AIOS_CACHE": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([_package_parent(), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] == [Path(paths.pop()).name]


# ---------------------------------------------------------------- command line


def test_cli_make_model_matches_the_api(tmp_path, tiny_dir):
    """python -m aios make-model writes the same bytes as make_model, in a fresh process."""
    result = _run_python(["-m", "aios", "make-model", "tiny", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout
    assert _file_bytes(tmp_path / "out") == _file_bytes(tiny_dir)


def test_cli_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    """make-model stops with a clear error on a non-empty OUT_DIR unless --force is given."""
    from aios.cli import main

    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["make-model", "tiny", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["make-model", "tiny", str(tmp_path), "--force", "--seed", "3"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "model.safetensors").is_file()


def test_cli_names_valid_presets(tmp_path, capsys):
    """A wrong preset name fails and lists the valid presets."""
    from aios.cli import main

    assert main(["make-model", "huge", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in PRESETS)
    assert not (tmp_path / "x").exists()


def test_cli_set_overrides_config(tmp_path):
    """--set KEY=VALUE overrides a config field (VALUE parsed as JSON)."""
    from aios.cli import main

    assert main(["make-model", "tiny", str(tmp_path), "--set", "num_hidden_layers=1",
                 "--set", "tie_word_embeddings=false"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["tie_word_embeddings"] is False


def test_cli_and_fixtures_do_not_import_transformers():
    """Importing the CLI and making a model never imports transformers (it is slow and not needed)."""
    code = (
        "import sys, tempfile, aios.cli\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "from aios.fixtures import make_model\n"
        "make_model('tiny', tempfile.mkdtemp())\n"
        "assert 'transformers' not in sys.modules\n"
    )
    result = _run_python(["-c", code])
    assert result.returncode == 0, result.stderr
