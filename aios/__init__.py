"""AIOS: a small, readable LLM inference engine for Qwen3, built lesson by lesson.

The package is light to import: heavy pieces load on first use, so
``import aios`` works even while most lessons are still stubs.

    from aios import LLM, SamplingParams
    llm = LLM("./models/tiny")
    print(llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=16))[0]["text"])
"""

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name):
    if name == "LLM":
        from aios.llm import LLM

        return LLM
    if name == "SamplingParams":
        from aios.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'aios' has no attribute {name!r}")
