"""Lesson 2 mutants: loading Qwen3 with transformers, the chat template, hand-written greedy decoding."""

from grader.mutants import Mutant

HF = "aios/hf_baseline.py"
LOOP = """\
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([tokens], device=device), use_cache=False).logits
        next_token = int(logits[0, -1].argmax())
        generated.append(next_token)
        tokens.append(next_token)
        if next_token == eos_token_id:
            break
"""

MUTANTS = [
    Mutant(2, "dtype-not-passed", HF,
           find="model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)",
           replace="model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)",
           bug="the dtype argument is ignored: the model loads in whatever dtype transformers picks"),
    Mutant(2, "chat-prompt-without-assistant-header", HF,
           find="tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
           replace="tokenizer.apply_chat_template(messages, tokenize=False)",
           bug="the prompt stops after the last message: no '<|im_start|>assistant' header to answer after"),
    Mutant(2, "chat-prompt-returns-token-ids", HF,
           find="tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
           replace="tokenizer.apply_chat_template(messages, add_generation_prompt=True)",
           bug="apply_chat_template's default tokenize=True: chat_prompt returns token ids, not the text"),
    Mutant(2, "chat-prompt-hand-written-chatml", HF,
           find="    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)\n",
           replace=('    turns = "".join(f"<|im_start|>{m[\'role\']}\\n{m[\'content\']}<|im_end|>\\n" for m in messages)\n'
                    '    return turns + "<|im_start|>assistant\\n"\n'),
           bug="the ChatML text is written by hand: right for Qwen3, wrong for a checkpoint with another template"),
    Mutant(2, "eos-not-returned", HF,
           find=LOOP,
           replace=LOOP.replace("        generated.append(next_token)\n        tokens.append(next_token)\n", "")
           .replace("            break\n", "            break\n        generated.append(next_token)\n"
                    "        tokens.append(next_token)\n"),
           bug="the eos check comes before the append, so the eos id itself is never returned"),
    Mutant(2, "logits-of-the-first-position", HF,
           find="        next_token = int(logits[0, -1].argmax())\n",
           replace="        next_token = int(logits[-1, 0].argmax())\n",
           bug="batch and sequence axes swapped: the argmax of the first position's logits, not the last"),
    Mutant(2, "samples-instead-of-argmax", HF,
           find="        next_token = int(logits[0, -1].argmax())\n",
           replace="        next_token = int(torch.multinomial(logits[0, -1].softmax(dim=-1), 1))\n",
           bug="draws the next token from the softmax instead of taking the most likely one (not greedy)"),
    Mutant(2, "returns-prompt-and-reply", HF,
           find="            break\n    return generated\n",
           replace="            break\n    return tokens\n",
           bug="returns the whole sequence, prompt included, instead of only the generated ids"),
    Mutant(2, "zero-new-tokens-gives-one", HF,
           find=LOOP,
           replace=LOOP.replace("    for _ in range(max_new_tokens):\n", "    while True:\n")
           .replace("        if next_token == eos_token_id:\n",
                    "        if next_token == eos_token_id or len(generated) >= max_new_tokens:\n"),
           bug="a do-while loop: the length check comes after a step, so max_new_tokens=0 still yields one token"),
]
