"""Fixtures of lesson 20's tests: the tiny Qwen3-MoE checkpoint, its variants, random expert weights."""

import json
import shutil

import pytest
import torch

@pytest.fixture(scope="session")
def tiny_moe_dir():
    """The tiny Qwen3-MoE checkpoint (8 experts, 2 per token, 3 layers; made once, then cached)."""
    from aios.fixtures import cached_model

    return cached_model("tiny-moe")


@pytest.fixture(scope="session")
def moe_variant(tmp_path_factory):
    """``moe_variant(**overrides)``: a tiny-moe checkpoint with config overrides (e.g. ``mlp_only_layers=[1]``)."""
    from aios.fixtures import make_model

    made = {}

    def make(seed: int = 0, **overrides):
        key = (seed, json.dumps(overrides, sort_keys=True))
        if key not in made:
            made[key] = make_model("tiny-moe", tmp_path_factory.mktemp("moe"), seed=seed, **overrides)
        return made[key]

    return make


@pytest.fixture
def edited_config(tmp_path):
    """``edited_config(model_dir, **fields)``: a copy of the checkpoint whose config.json has ``fields`` changed."""

    def edit(model_dir, **fields):
        out = tmp_path / "edited"
        shutil.copytree(model_dir, out)
        config = json.loads((out / "config.json").read_text())
        config.update(fields)
        (out / "config.json").write_text(json.dumps(config))
        return out

    return edit


@pytest.fixture
def hf_logits():
    """``hf_logits(model_dir, ids)``: transformers' Qwen3MoeForCausalLM logits [len(ids), vocab] in float32."""
    from transformers import AutoModelForCausalLM

    def run(model_dir, ids):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]

    return run
