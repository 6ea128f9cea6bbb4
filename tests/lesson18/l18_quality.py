"""Test-side helpers for lesson 18's quality checks: held-out text, logits, KL divergence, top-1 agreement.

Everything here runs on the tests' side: the model is the learner's, the measuring is not.
"""

import math
from pathlib import Path

import torch

from grader.remote.client import learner_readable

ROOT = Path(__file__).resolve().parents[2]
TRAINED = learner_readable(ROOT / "assets" / "aios-tiny-lm")  # a copy the learner's code can read when sandboxed
CORPUS = ROOT / "assets" / "corpus" / "fortunes.txt"
HELD_OUT_EVERY = 25  # every 25th fortune was never trained on (aios/fixtures/trained.py)


def held_out_documents(count: int, max_tokens: int) -> list[list[int]]:
    """Token ids of the first ``count`` held-out fortunes (plain text + <|endoftext|>), cut at ``max_tokens``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TRAINED / "tokenizer.json"))
    fortunes = []
    for chunk in CORPUS.read_text(encoding="utf-8").split("\n%\n"):
        if chunk.startswith("%% "):
            chunk = chunk.partition("\n")[2]
        if chunk.strip():
            fortunes.append(chunk.strip())
    held_out = fortunes[::HELD_OUT_EVERY][:count]
    return [tokenizer.encode(text + "<|endoftext|>").ids[:max_tokens] for text in held_out]


def document_logits(model, documents: list[list[int]]) -> list[torch.Tensor]:
    """The model's float32 logits [len(doc), vocab] for each document, each run as one sequence."""
    results = []
    with torch.no_grad():  # not inference_mode: its tensors cannot be shared with the learner worker
        for ids in documents:
            hidden = model(torch.tensor(ids), torch.arange(len(ids)))
            results.append(model.compute_logits(hidden).float())
    return results


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor], documents) -> dict:
    """Mean KL(reference || candidate) per token, top-1 agreement, and both perplexities on the documents."""
    kl = agree = tokens = 0.0
    nll = {"reference": 0.0, "candidate": 0.0}
    predicted = 0
    for ref, cand, ids in zip(reference, candidate, documents):
        p, q = ref.log_softmax(-1), cand.log_softmax(-1)
        kl += (p.exp() * (p - q)).sum().item()
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        tokens += len(ids)
        targets = torch.tensor(ids[1:])[:, None]
        nll["reference"] -= p[:-1].gather(1, targets).sum().item()
        nll["candidate"] -= q[:-1].gather(1, targets).sum().item()
        predicted += len(ids) - 1
    return {"kl": kl / tokens, "top1": agree / tokens,
            "ppl_reference": math.exp(nll["reference"] / predicted),
            "ppl_candidate": math.exp(nll["candidate"] / predicted)}
