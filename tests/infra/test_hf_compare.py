"""``aios bench --compare-hf``: the engine and transformers' continuous batching on the same fixed-length workload."""

import pytest


def test_comparison_workload_is_the_headline_prefix(learner_import):
    hf_compare = learner_import("aios.bench.hf_compare")
    throughput = learner_import("aios.bench.throughput")
    ladder = learner_import("aios.bench.ladder")
    prompts, output_len = hf_compare.comparison_workload(5, 1000, seed=0)
    headline = throughput.HEADLINE_WORKLOAD
    full = ladder.make_workload(5, headline["prompt_len"], headline["output_len"], 1000, 0)
    assert prompts == [list(p) for p in full.prompts]
    assert output_len == round(sum(full.output_lens) / 5)


@pytest.mark.timeout(600)
def test_both_engines_generate_the_same_token_count(tiny_model_dir, learner_import):
    """Both sides produce requests x output_len tokens (EOS ignored, capped by max_model_len), and a ratio."""
    LLM = learner_import("aios").LLM
    hf_compare = learner_import("aios.bench.hf_compare")
    llm = LLM(str(tiny_model_dir), device="cpu", load_format="dummy")
    result = hf_compare.compare_with_transformers(llm, tiny_model_dir, num_requests=2)
    assert "transformers_error" not in result, result
    expected = result["requests"] * result["output_len"]
    assert result["aios"]["output_tokens"] == expected == result["transformers"]["output_tokens"]
    assert result["ratio"] > 0
    assert "aios/transformers" in hf_compare.summary(result)
