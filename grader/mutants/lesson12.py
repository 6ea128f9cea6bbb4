"""Lesson 12 mutants: temperature, top-k, top-p, seeded counter-based noise and the exponential race."""

from grader.mutants import Mutant

SAMPLER = "aios/layers/sampler.py"

MUTANTS = [
    Mutant(12, "temperature-after-softmax", SAMPLER,
           find="        scaled = logits / safe_temperatures.float().unsqueeze(1)\n",
           replace="        scaled = torch.log(torch.softmax(logits, dim=-1) / safe_temperatures.float().unsqueeze(1))\n",
           bug="the probabilities are divided by the temperature after the softmax: in log space that is a "
               "constant shift per row, so the temperature changes nothing"),
    Mutant(12, "plus-log-noise", SAMPLER,
           find="        sampled = (scaled - torch.log(noise)).argmax(dim=-1)\n",
           replace="        sampled = (scaled + torch.log(noise)).argmax(dim=-1)\n",
           bug="the race adds log E instead of subtracting it (argmax of p * E, not p / E)"),
    Mutant(12, "tiny-temperature-is-greedy", SAMPLER,
           find="        sampled_rows = temperatures > 0\n",
           replace="        sampled_rows = temperatures >= 0.1  # below that it is practically greedy\n",
           bug="a small but nonzero temperature (0.05) is treated as greedy: only temperature 0 means argmax"),
    Mutant(12, "top-k-keeps-k-plus-one", SAMPLER,
           find="    keep_sorted = rank.unsqueeze(0) < k.unsqueeze(1)\n",
           replace="    keep_sorted = rank.unsqueeze(0) <= k.unsqueeze(1)\n",
           bug="top-k keeps ranks 0..k, one token too many"),
    Mutant(12, "top-k-nonpositive-not-unlimited", SAMPLER,
           find="    k = torch.where(top_ks > 0, top_ks, vocab_size).clamp(max=vocab_size)\n",
           replace="    k = top_ks.clamp(max=vocab_size)\n",
           bug="top_k -1 or 0 is used as it is instead of meaning 'no limit': such a row keeps no token at all"),
    Mutant(12, "top-k-ties-keep-all", SAMPLER,
           find="    order = logits.argsort(dim=-1, descending=True, stable=True)\n"
                "    rank = torch.arange(vocab_size, device=logits.device)\n"
                "    keep_sorted = rank.unsqueeze(0) < k.unsqueeze(1)\n"
                "    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)\n",
           replace="    kth_largest = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))\n"
                   "    keep = logits >= kth_largest\n",
           bug="top-k keeps every logit >= the k-th largest: with ties at the boundary more than k tokens survive"),
    Mutant(12, "top-p-drops-boundary-token", SAMPLER,
           find="    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs\n",
           replace="    mass_before = sorted_probs.cumsum(dim=-1)\n",
           bug="top-p compares the mass *including* each token with p, so the token that makes the mass reach "
               "p is dropped (one token too few)"),
    Mutant(12, "top-p-boundary-inclusive", SAMPLER,
           find="    keep_sorted = mass_before < top_ps.unsqueeze(1)\n",
           replace="    keep_sorted = mass_before <= top_ps.unsqueeze(1)\n",
           bug="top-p keeps a token while the mass before it is <= p: when the set already reaches p exactly, "
               "one token too many is kept"),
    Mutant(12, "top-p-sorted-ascending", SAMPLER,
           find="    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)\n",
           replace="    sorted_probs, order = probs.sort(dim=-1, stable=True)\n",
           bug="top-p sorts the probabilities in ascending order: the nucleus is built from the least likely tokens"),
    Mutant(12, "top-p-unnormalised-probs", SAMPLER,
           find="    probs = torch.softmax(logits, dim=-1)\n    sorted_probs",
           replace="    probs = logits.exp()\n    sorted_probs",
           bug="top-p measures exp(logits) without normalising them: the masses do not sum to 1, so the "
               "nucleus is too small or too large"),
    Mutant(12, "top-p-before-top-k", SAMPLER,
           find="        if limits_top_k(top_ks, scaled.shape[-1], host):\n"
                "            scaled = apply_top_k(scaled, top_ks)\n"
                "        if limits_top_p(top_ps, host):\n"
                "            scaled = apply_top_p(scaled, top_ps)\n",
           replace="        if limits_top_p(top_ps, host):\n"
                   "            scaled = apply_top_p(scaled, top_ps)\n"
                   "        if limits_top_k(top_ks, scaled.shape[-1], host):\n"
                   "            scaled = apply_top_k(scaled, top_ks)\n",
           bug="top-p runs before top-k, so the nucleus is measured on the full distribution instead of the "
               "renormalised top-k"),
    Mutant(12, "seed-zero-is-unseeded", SAMPLER,
           find="    seeded_rows = [row for row, seed in enumerate(seeds or []) if seed is not None]\n",
           replace="    seeded_rows = [row for row, seed in enumerate(seeds or []) if seed]\n",
           bug="`if seed` instead of `if seed is not None`: a request with seed=0 draws from the global "
               "generator and is not reproducible"),
    Mutant(12, "one-generator-for-seeded-rows", SAMPLER,
           find="        uniform = seeded_uniform([seeds[row] for row in seeded_rows], [steps[row] for row in seeded_rows],\n"
                "                                 vocab_size, device)\n"
                "        noise.index_copy_(0, to_device(seeded_rows, torch.int64, device), -torch.log(uniform))\n",
           replace="        first = seeded_rows[0]\n"
                   "        generator = torch.Generator(device).manual_seed((seeds[first] + steps[first]) % 2**63)\n"
                   "        noise[seeded_rows] = torch.empty(len(seeded_rows), vocab_size, device=device).exponential_(\n"
                   "            generator=generator)\n",
           bug="one torch.Generator, seeded from the first seeded row, draws the noise of every seeded row: a "
               "row's noise depends on its place among the seeded rows and on their seeds"),
    Mutant(12, "seeded-uniform-ignores-step", SAMPLER,
           find="    row_key = hash_combine(hash_combine(mix32(seed_high), seed_low), step)\n",
           replace="    row_key = hash_combine(mix32(seed_high), seed_low)\n",
           bug="the seeded noise does not depend on the step: every step of a seeded request draws the same noise"),
    Mutant(12, "seeded-uniform-low-32-bits-only", SAMPLER,
           find="    row_key = hash_combine(hash_combine(mix32(seed_high), seed_low), step)\n",
           replace="    row_key = hash_combine(mix32(seed_low), step)\n",
           bug="only the low 32 bits of the seed are used: seeds that differ in their high bits draw the same noise"),
    Mutant(12, "candidate-noise-by-column", SAMPLER,
           find="            noise = noise.gather(1, token_ids)  # each candidate keeps its own token's noise\n",
           replace="            noise = noise[:, : token_ids.shape[1]]\n",
           bug="on the top-k candidate path the noise of the first K token ids is used for the K candidates, "
               "so a seeded row draws a different token than over the whole vocabulary"),
]
