"""Test-side helpers of lesson 18's hidden tests: logits, quality figures, an AWQ writer of the tests' own."""

import math

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def run_documents(model, documents):
    """float32 logits of each document, run as one sequence."""
    with torch.no_grad():
        return [model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)))).float() for ids in documents]


def quality(reference, candidate, documents) -> dict:
    """Mean per-token KL(reference || candidate), top-1 agreement and the perplexity ratio."""
    kl = agree = tokens = 0.0
    nll_ref = nll_cand = 0.0
    for ref, cand, ids in zip(reference, candidate, documents):
        p, q = ref.log_softmax(-1), cand.log_softmax(-1)
        kl += (p.exp() * (p - q)).sum().item()
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        tokens += len(ids)
        targets = torch.tensor(ids[1:])[:, None]
        nll_ref -= p[:-1].gather(1, targets).sum().item()
        nll_cand -= q[:-1].gather(1, targets).sum().item()
    predicted = tokens - len(documents)
    return {"kl": kl / tokens, "top1": agree / tokens, "ppl_ratio": math.exp((nll_cand - nll_ref) / predicted)}


def awq_pack(codes: torch.Tensor) -> torch.Tensor:
    """[rows, cols] codes 0..15 -> [rows, cols / 8] int32, AWQ's order, written bit by bit (int64, then wrapped)."""
    rows, cols = codes.shape
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for pack in range(cols // 8):
        for nibble, column in enumerate(AWQ_ORDER):
            packed[:, pack] += codes[:, 8 * pack + column].long() << (4 * nibble)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def awq_tensors(weight: torch.Tensor, group_size: int, seed: int):
    """Random AWQ tensors for a [out, in] projection, and the [out, in] weight they stand for."""
    out_features, in_features = weight.shape
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (in_features, out_features), generator=gen)
    zeros = torch.randint(0, 16, (in_features // group_size, out_features), generator=gen)
    scales = (torch.rand(in_features // group_size, out_features, generator=gen) * 0.01 + 0.001).half()
    dense = (codes - zeros.repeat_interleave(group_size, 0)).float() * scales.float().repeat_interleave(group_size, 0)
    return {"qweight": awq_pack(codes), "qzeros": awq_pack(zeros), "scales": scales}, dense.t()
