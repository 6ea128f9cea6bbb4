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
        # BEGIN SOLUTION lesson12
        greedy = logits.argmax(dim=-1)
        safe_t = torch.where(temperatures > 0, temperatures, torch.ones_like(temperatures))
        probs = torch.softmax(logits.float() / safe_t.unsqueeze(1), dim=-1)
        exponential = torch.empty_like(probs).exponential_(1.0)
        sampled = (probs / exponential).argmax(dim=-1)
        return torch.where(temperatures > 0, sampled, greedy)
        # END SOLUTION
