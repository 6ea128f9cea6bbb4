"""Lesson 15 demo: serve the engine over the OpenAI API, stream, cancel, and benchmark it.

    python exercises/lesson15/run_lesson15.py               # with your aios/
    python exercises/lesson15/run_lesson15.py --reference   # with solutions/aios/
    python exercises/lesson15/run_lesson15.py --model DIR --num-prompts 64 --max-concurrency 16

Starts the server on a free port of 127.0.0.1 (in this process), then, with the official
``openai`` client: one completion, a streamed chat answer with the time of every chunk,
a request cancelled half-way (watch its KV blocks come back), and a short bench-serve run.
The server stops when the demo ends.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--num-prompts", type=int, default=32, help="requests in the benchmark (default: 32)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="benchmark concurrency (default: 8)")
    parser.add_argument("--output-len", type=int, default=32)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def wait_until_idle(engine, timeout: float = 10.0) -> bool:
    manager = engine.block_manager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.is_finished() and manager.num_free_blocks == manager.num_blocks:
            return True
        time.sleep(0.02)
    return False


def demo(base_url: str, app, name: str, args: argparse.Namespace) -> None:
    from openai import OpenAI

    from aios.server.bench import BenchConfig, format_summary, run_benchmark

    engine = app.state.async_engine.engine
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)

    print(f"\n1. POST {base_url}/v1/completions (greedy)")
    result = client.completions.create(model=name, prompt="Once upon a time", max_tokens=16, temperature=0)
    print(f"   text: {result.choices[0].text!r}")
    print(f"   finish_reason={result.choices[0].finish_reason}, usage={result.usage.model_dump(exclude_none=True)}")

    print("\n2. Streamed chat: each chunk as it arrives")
    start = time.perf_counter()
    stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Tell me a story."}],
                                            max_tokens=12, temperature=0, stream=True)
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.finish_reason:
            shown = f"<finish_reason={choice.finish_reason}>"
        elif choice.delta.role:
            shown = f"<role={choice.delta.role}>"
        else:
            shown = repr(choice.delta.content)
        print(f"   {1000 * (time.perf_counter() - start):7.1f} ms  {shown}")

    print("\n3. A client that hangs up half-way")
    manager = engine.block_manager
    stream = client.completions.create(model=name, prompt="A very long answer:", max_tokens=400, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 4:
            print(f"   after 5 chunks: {manager.num_blocks - manager.num_free_blocks} KV blocks in use")
            break
    stream.close()
    freed = wait_until_idle(engine)
    print(f"   after closing:  {manager.num_blocks - manager.num_free_blocks} KV blocks in use "
          f"({'aborted and freed' if freed else 'NOT freed: check Scheduler.abort and the abort path'})")

    print(f"\n4. bench-serve: {args.num_prompts} requests, {args.max_concurrency} at a time, "
          f"{args.output_len} tokens each")
    config = BenchConfig(base_url=base_url, model=name, num_prompts=args.num_prompts,
                         max_concurrency=args.max_concurrency, input_len=32, output_len=args.output_len,
                         duration=300, request_timeout=120)
    summary, _ = asyncio.run(run_benchmark(config, progress=True))
    print(format_summary(summary))

    import httpx

    wanted = ("aios_requests_finished_total", "aios_generation_tokens_total", "aios_kv_cache_usage_ratio",
              "aios_time_to_first_token_seconds_count")
    lines = [line for line in httpx.get(f"{base_url}/metrics").text.splitlines() if line.startswith(wanted)]
    print("\n5. A few lines of GET /metrics\n   " + "\n   ".join(lines))


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model
    from aios.server.launcher import ServerThread, create_app

    model = args.model or trained_model()
    name = Path(model).resolve().name
    print(f"aios from {__import__('aios').__file__}\nloading {model} ...")
    try:
        app = create_app(model, num_kvcache_blocks=1024, max_model_len=1024)
    except NotImplementedError as exc:
        print(f"the engine cannot load yet: {exc}")
        return 1
    config = app.state.async_engine.engine.config
    print(f"engine: {config.device}, {config.dtype}, attention={config.attention_backend}, "
          f"{config.num_kvcache_blocks} KV blocks of {config.kvcache_block_size}")
    with ServerThread(app) as base_url:
        print(f"serving {name!r} at {base_url}/v1")
        try:
            demo(base_url, app, name, args)
        except NotImplementedError as exc:
            print(f"\nnot implemented yet: {exc}")
            return 1
        except Exception as exc:  # noqa: BLE001 - a stub on the server side shows up as an HTTP error
            print(f"\nthe demo stopped: {type(exc).__name__}: {exc}\n"
                  "(a 500 usually means a lesson 15 function still raises NotImplementedError: see the server log above)")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
