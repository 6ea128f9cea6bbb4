"""Lesson 11 tests run the Triton kernels compiled on a GPU and in Triton's interpreter on the CPU.

The interpreter must be switched on before any kernel is defined, so this runs before the
test modules import ``aios.layers.triton_attention``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
