"""Lesson 2: run Qwen3 with Hugging Face transformers — the reference every later lesson is checked against."""

from pathlib import Path

import torch


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a Qwen3 checkpoint with transformers. Returns (model, tokenizer), the model in eval mode.

    Works offline: the directory must hold config.json, the safetensors weights and the tokenizer files.
    """
    from aios.utils.hf_config import load_model_config

    load_model_config(model_dir)  # a clear error for a wrong path, before transformers' own
    # BEGIN SOLUTION lesson2
    # Hint: AutoModelForCausalLM and AutoTokenizer both take the directory; pass dtype=... to the model.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model.eval(), tokenizer
    # END SOLUTION


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """Render chat messages ([{"role": "user", "content": "..."}]) with the checkpoint's chat template.

    The result ends with the assistant header, so the model's next tokens are its reply.
    """
    # BEGIN SOLUTION lesson2
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # END SOLUTION


@torch.inference_mode()
def hf_greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding written out by hand around the transformers model.

    Each step runs the model on the whole sequence, takes the last position's
    logits and appends their argmax. Returns the generated ids only.
    """
    # BEGIN SOLUTION lesson2
    # Hint: model(input_ids).logits has shape [batch, seq, vocab]; use use_cache=False to keep it simple.
    device = next(model.parameters()).device
    tokens = list(prompt_ids)
    generated = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([tokens], device=device), use_cache=False).logits
        next_token = int(logits[0, -1].argmax())
        generated.append(next_token)
        tokens.append(next_token)
        if next_token == eos_token_id:
            break
    return generated
    # END SOLUTION
