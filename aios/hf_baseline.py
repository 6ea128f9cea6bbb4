"""Lesson 2: run Qwen3 with Hugging Face transformers — the reference every later lesson is checked against."""

from pathlib import Path

import torch


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a Qwen3 checkpoint with transformers. Returns (model, tokenizer), the model in eval mode.

    Works offline: the directory must hold config.json, the safetensors weights and the tokenizer files.
    """
    from aios.utils.hf_config import load_model_config

    load_model_config(model_dir)  # a clear error for a wrong path, before transformers' own
    # Hint: AutoModelForCausalLM and AutoTokenizer both take the directory; pass dtype=... to the model.
    raise NotImplementedError("Lesson 2: implement load_hf_model in aios/hf_baseline.py — see exercises/lesson02/README.md, 'What to implement'")


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """Render chat messages ([{"role": "user", "content": "..."}]) with the checkpoint's chat template.

    The result ends with the assistant header, so the model's next tokens are its reply.
    """
    raise NotImplementedError("Lesson 2: implement chat_prompt in aios/hf_baseline.py — see exercises/lesson02/README.md, 'What to implement'")


@torch.inference_mode()
def hf_greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding written out by hand around the transformers model.

    Each step runs the model on the whole sequence, takes the last position's
    logits and appends their argmax. Returns the generated ids only.
    """
    # Hint: model(input_ids).logits has shape [batch, seq, vocab]; use use_cache=False to keep it simple.
    raise NotImplementedError("Lesson 2: implement hf_greedy_generate in aios/hf_baseline.py — see exercises/lesson02/README.md, 'What to implement'")
