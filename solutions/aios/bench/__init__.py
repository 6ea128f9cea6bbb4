"""Throughput measurements shared by the GPU benchmarks, the lesson demos and the CLI."""
