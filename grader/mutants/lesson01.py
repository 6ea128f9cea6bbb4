"""Lesson 1 mutants: RMSNorm, RoPE, GQA causal attention, gated MLP."""

from grader.mutants import Mutant

MUTANTS = [
    Mutant(1, "rmsnorm-weight-before-cast", "aios/layers/layernorm.py",
           find="    return weight * normed.to(input_dtype)\n    # END SOLUTION\n\n\ndef add_rms_norm",
           replace="    return (weight * normed).to(input_dtype)\n    # END SOLUTION\n\n\ndef add_rms_norm",
           bug="RMSNorm multiplies by the weight in float32, then casts back (transformers casts first)"),
]
