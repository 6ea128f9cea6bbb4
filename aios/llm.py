"""The user-facing entry point: ``LLM(model_dir, **options).generate(prompts, params)``."""

from aios.engine.llm_engine import LLMEngine


class LLM(LLMEngine):
    """An offline Qwen3 engine. Options are the fields of ``aios.config.Config``."""
