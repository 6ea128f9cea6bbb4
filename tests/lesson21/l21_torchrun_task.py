"""What every process of lesson 21's two-node torchrun test runs: ``torchrun ... l21_torchrun_task.py MODEL OUT``.

Each rank writes its pid to OUT/pid{RANK} and builds the engine: ranks other than 0 serve rank 0 inside
``LLM(...)`` and end there. Rank 0 generates once, writes the tokens to OUT/tokens.json, then keeps generating
until the engine fails (the test kills rank 1) and writes that error to OUT/error.txt.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]
OPTIONS = {**features_up_to(14), "device": "cpu", "attention_backend": "torch", "max_num_seqs": 4, "max_model_len": 128,
           "num_kvcache_blocks": 48, "pipeline_parallel_size": 2}


def main(model_dir: str, out: Path) -> None:
    (out / f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
    llm = LLM(model_dir, **OPTIONS)  # ranks != 0 never return from here
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    tokens = [o["token_ids"] for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    (out / "tokens.json").write_text(json.dumps(tokens))
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            llm.generate(PROMPTS, params, use_tqdm=False)
    except Exception as error:  # noqa: BLE001 - the test looks at which error, and how fast
        (out / "error.txt").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        raise SystemExit(1) from None
    llm.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
