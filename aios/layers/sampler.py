"""Turning logits into next tokens: greedy (lesson 8) and sampling (lesson 12)."""

import torch


def greedy_sample(logits: torch.Tensor) -> torch.Tensor:
    """logits: [num_seqs, vocab] -> [num_seqs] token ids of the largest logit."""
    return logits.argmax(dim=-1)


class Sampler:
    """Samples one token per row from softmax(logits / temperature) with the Gumbel-max trick.

    temperatures: [num_seqs] float; rows with temperature 0 take the argmax.
    """

    def __call__(self, logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Lesson 12: implement Sampler.__call__ in aios/layers/sampler.py — see exercises/lesson12/README.md, 'What to implement'")
