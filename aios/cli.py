"""The ``aios`` command line: ``python -m aios <command> [options]``.

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a name, a one-line help,
a function that declares its arguments and a function that runs it. To add one,
write those two functions and append a ``Command`` to the list::

    def _args_hello(parser):
        parser.add_argument("name")

    def run_hello(args) -> int:
        print(f"hello {args.name}")
        return 0

    COMMANDS.append(Command("hello", "say hello", _args_hello, run_hello))

Keep this module light: import heavy libraries (torch, transformers) inside the
``run_*`` functions, so ``python -m aios --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class CliError(Exception):
    """A user mistake: printed as ``aios <command>: error: <message>``, exit status 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand of ``python -m aios``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- make-model


def _args_make_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", metavar="PRESET", help="model shape: tiny, small, 0.6b, 1.7b, 4b, 8b, 14b or 32b")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    parser.add_argument("--force", action="store_true", help="write even if OUT_DIR is not empty")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config field, e.g. --set num_hidden_layers=1 (VALUE is read as JSON if it parses)",
    )
    parser.add_argument("--quantize", choices=["int4", "int8", "fp8"], default=None,
                        help="write the checkpoint pre-quantized (lesson 18; the layouts of `aios quantize`)")
    parser.add_argument("--group-size", type=int, default=128,
                        help="with --quantize int4: the group along the input features (default 128)")


def _parse_overrides(items: list[str]) -> dict:
    """``["num_hidden_layers=1", "dtype=float32"]`` -> ``{"num_hidden_layers": 1, "dtype": "float32"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def run_make_model(args: argparse.Namespace) -> int:
    """Write an offline Qwen3 checkpoint (see :func:`aios.fixtures.make_model`)."""
    from aios.fixtures import PRESETS, make_model

    if args.preset not in PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    out_dir: Path = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} is not empty; pass --force to write the checkpoint into it anyway")
    try:
        path = make_model(args.preset, out_dir, seed=args.seed, **_parse_overrides(args.overrides))
        if args.quantize:
            path = _quantize_in_place(path, args.quantize, args.group_size)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    kind = f"{args.quantize} " if args.quantize else ""
    print(f"wrote {args.preset} {kind}checkpoint (seed {args.seed}, {size / 2**20:.1f} MiB) to {path}")
    return 0


def _quantize_in_place(path: Path, method: str, group_size: int) -> Path:
    """Replace the float checkpoint in ``path`` by its ``method`` copy (lesson 18's ``quantize``)."""
    import shutil
    import tempfile

    from aios.utils.quantize_checkpoint import quantize_checkpoint

    with tempfile.TemporaryDirectory(prefix="aios-quantize-", dir=path.parent) as scratch:
        quantized = quantize_checkpoint(path, Path(scratch) / "q", method, group_size)
        for item in quantized.iterdir():  # same file names: each float file is replaced
            shutil.move(str(item), path / item.name)
    return path


# ---------------------------------------------------------------- train-tiny


def _args_train_tiny(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["lm", "cpu", "micro"], default="lm",
                        help="lm: the shipped model (minutes on a GPU); cpu: smaller, for a CPU; micro: a smoke test")
    parser.add_argument("--device", default="auto", help="auto (CUDA if there is one), cuda or cpu")
    parser.add_argument("--steps", type=int, help="training steps (default: the size's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("models/aios-tiny-lm"),
                        help="checkpoint folder (default: models/aios-tiny-lm; the shipped one is assets/aios-tiny-lm)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run_train_tiny(args: argparse.Namespace) -> int:
    """Train the tiny fortune-cookie model (see :mod:`aios.fixtures.train_tiny`) and write it to ``--out``."""
    from aios.fixtures.train_tiny import train

    if args.steps is not None and args.steps < 1:
        raise CliError("--steps must be >= 1")
    figures = train(args.size, device=args.device, steps=args.steps, seed=args.seed, out=args.out,
                    progress=args.progress)
    print(f"wrote {args.out}: train loss {figures['train_loss']:.3f}, held-out loss {figures['held_out_loss']:.3f} "
          f"(perplexity {figures['held_out_perplexity']:.1f}) after {figures['steps']} steps, "
          f"{figures['seconds']:.0f} s on {figures['device']}")
    return 0


# ---------------------------------------------------------------- serve (lesson 15)


def _args_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="Qwen3 checkpoint folder (default: the trained aios-tiny-lm, assets/aios-tiny-lm)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0 picks a free one)")
    parser.add_argument("--api-key", action="append", metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1 requests; repeat for several keys "
                             "(default: $AIOS_API_KEY, else none)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help="more keys, one a line, each with optional limits: "
                             "'KEY [name=NAME] [rate=REQUESTS_PER_MINUTE] [max-concurrency=N]' (429 beyond them)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                        help="on SIGTERM, seconds running requests get to finish before they are ended (default: 30)")
    parser.add_argument("--client-timeout", type=float, default=30.0, metavar="S",
                        help="seconds a client gets to send a request's headers, and again its body (default: 30)")
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="the model id clients send (default: the checkpoint folder's name)")
    parser.add_argument("--max-tokens-limit", type=int, metavar="N",
                        help="largest max_tokens a request may ask for (default: the context length)")
    parser.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                        help="largest request body in bytes (default: 4 MiB)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true",
                        help="log every HTTP request (off by default: under load it costs the event loop time)")
    engine = parser.add_argument_group("engine options (default: the engine's, the fastest the device supports)")
    engine.add_argument("--load-format", choices=["safetensors", "dummy"],
                        help="dummy: random weights, only config.json and the tokenizer are read (benchmarks)")
    engine.add_argument("--dtype", help="auto, float32, float16 or bfloat16")
    engine.add_argument("--device", help="auto, cuda or cpu")
    engine.add_argument("--max-model-len", type=int, metavar="N")
    engine.add_argument("--max-num-seqs", type=int, metavar="N")
    engine.add_argument("--max-num-batched-tokens", type=int, metavar="N")
    engine.add_argument("--num-kvcache-blocks", type=int, metavar="N")
    engine.add_argument("--kvcache-block-size", type=int, metavar="N")
    engine.add_argument("--gpu-memory-utilization", type=float, metavar="F")
    engine.add_argument("--tensor-parallel-size", type=int, metavar="N")
    engine.add_argument("--pipeline-parallel-size", type=int, metavar="N",
                        help="cut the layers into N stages (lesson 21); with torchrun, one stage per node")
    engine.add_argument("--attention-backend", choices=["auto", "torch", "triton"])
    engine.add_argument("--enforce-eager", action="store_true", default=None, help="no CUDA graphs")
    engine.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false", default=None)
    engine.add_argument("--enable-chunked-prefill", action="store_true", default=None,
                        help="token-budget steps: decodes first, long prompts in chunks of --max-num-batched-tokens "
                             "(lesson 16)")
    engine.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="overlap the host with the GPU (lesson 17; default: on for CUDA, off on the CPU)")
    engine.add_argument("--speculative-config", type=_json_dict, metavar="JSON",
                        help='speculative decoding (lesson 19), e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\'')
    engine.add_argument("--kv-cache-dtype", choices=["auto", "fp8"],
                        help="fp8: keys and values in float8 e4m3, a scale per layer (lesson 18; CPU or an FP8 GPU)")


SERVE_ENGINE_OPTIONS = ("load_format", "dtype", "device", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                        "num_kvcache_blocks", "kvcache_block_size", "gpu_memory_utilization", "tensor_parallel_size",
                        "attention_backend", "enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                        "async_scheduling", "pipeline_parallel_size", "speculative_config", "kv_cache_dtype")


def _json_dict(text: str) -> dict:
    """A command-line JSON object (lesson 19's --speculative-config)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as {\"method\": \"ngram\", ...}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model over an OpenAI-compatible HTTP API until interrupted (Ctrl-C)."""
    try:
        import uvicorn  # noqa: F401 - checked here for the message below

        from aios.server.app import ServerSettings
        from aios.server.launcher import AiosServer, create_app, server_config
    except ImportError as exc:
        raise CliError(f"{exc.name} is missing: pip install fastapi uvicorn prometheus-client") from exc
    if args.model is None:
        from aios.fixtures import trained_model

        args.model = trained_model()
    if not args.model.is_dir():
        raise CliError(f"{args.model} is not a folder; make a checkpoint with `python -m aios make-model tiny DIR`")
    options = {name: getattr(args, name) for name in SERVE_ENGINE_OPTIONS if getattr(args, name) is not None}
    name = args.served_model_name or args.model.resolve().name
    try:
        settings = ServerSettings(served_model_name=name, api_keys=_api_keys(args),
                                  max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit,
                                  body_timeout=args.client_timeout, shutdown_timeout=args.shutdown_timeout)
    except ValueError as exc:  # --client-timeout sets body_timeout
        raise CliError(f"{exc} (--client-timeout, --shutdown-timeout, --max-body-bytes, --max-tokens-limit)") from exc
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it may use it", file=sys.stderr)
    try:
        app = create_app(args.model, settings, **options)
    except (TypeError, ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    config = app.state.async_engine.engine.config
    print(f"serving {name!r} ({config.device}, {config.dtype}, max_model_len {config.max_model_len}, "
          f"{config.num_kvcache_blocks} KV blocks) at http://{args.host}:{args.port}/v1", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    AiosServer(server_config(app, args.host, args.port, head_timeout=args.client_timeout, log_level=args.log_level,
                             access_log=args.access_log)).run()
    return 0


def _api_keys(args: argparse.Namespace) -> list:
    """Every key of ``--api-key`` (or $AIOS_API_KEY) and ``--api-key-file``."""
    import os

    from aios.server.tenants import APIKey, KeyFileError, read_key_file

    given = args.api_key or ([os.environ["AIOS_API_KEY"]] if os.environ.get("AIOS_API_KEY") else [])
    keys = [APIKey(key, f"api-key-{i + 1}") for i, key in enumerate(given)]
    if args.api_key_file is not None:
        try:
            keys += read_key_file(args.api_key_file)
        except (OSError, KeyFileError) as exc:
            raise CliError(str(exc)) from exc
    return keys


def _args_bench_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root, without /v1")
    parser.add_argument("--model", required=True, help="model id to send (see GET /v1/models)")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--num-prompts", type=int, default=100, help="requests to send (default: 100)")
    parser.add_argument("--max-concurrency", type=int, default=32, help="most requests in flight (default: 32)")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="mean new requests per second, Poisson arrivals (default: inf, all at once)")
    parser.add_argument("--input-len", type=int, default=128, help="prompt length in words or tokens (default: 128)")
    parser.add_argument("--output-len", type=int, default=128, help="max_tokens of each request (default: 128)")
    parser.add_argument("--duration", type=float, default=600.0,
                        help="stop sending new requests after this many seconds (default: 600)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                        help="do not send ignore_eos (for servers that refuse it); outputs may then be shorter")
    parser.add_argument("--tokenizer", metavar="DIR", help="send exact-length token-id prompts made with this tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-json", type=Path, metavar="FILE", help="write the summary (and every request) here")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run_bench_serve(args: argparse.Namespace) -> int:
    """Load-test an OpenAI-compatible server; exit status 1 if any request failed."""
    import asyncio

    from aios.server.bench import BenchConfig, format_summary, result_json, run_benchmark

    if args.num_prompts < 1 or args.max_concurrency < 1 or args.output_len < 1 or args.input_len < 1:
        raise CliError("--num-prompts, --max-concurrency, --input-len and --output-len must be >= 1")
    config = BenchConfig(
        base_url=args.base_url, model=args.model, endpoint=args.endpoint, num_prompts=args.num_prompts,
        max_concurrency=args.max_concurrency, request_rate=args.request_rate, input_len=args.input_len,
        output_len=args.output_len, duration=args.duration, request_timeout=args.request_timeout,
        api_key=args.api_key, ignore_eos=args.ignore_eos, seed=args.seed, tokenizer=args.tokenizer,
    )
    summary, records = asyncio.run(run_benchmark(config, progress=args.progress))
    print(format_summary(summary))
    errors = [r.error for r in records if not r.ok]
    if errors:
        print(f"{len(errors)} request(s) failed; first error: {errors[0]}", file=sys.stderr)
    if args.result_json:
        args.result_json.parent.mkdir(parents=True, exist_ok=True)
        args.result_json.write_text(result_json(summary, records, with_records=True))
        print(f"wrote {args.result_json}")
    return 1 if errors else 0


# ---------------------------------------------------------------- registry and entry point

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: list[Command] = [
    Command("make-model", "write an offline Qwen3 checkpoint with random weights", _args_make_model, run_make_model),
    Command("train-tiny", "train the small fortune-cookie Qwen3 the demos use by default", _args_train_tiny,
            run_train_tiny),
    Command("serve", "serve a model over an OpenAI-compatible HTTP API (lesson 15)", _args_serve, run_serve),
    Command("bench-serve", "load-test an OpenAI-compatible server: throughput, TTFT, TPOT (lesson 15)",
            _args_bench_serve, run_bench_serve),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m aios", description="AIOS: a small LLM inference engine for Qwen3.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CliError as exc:
        print(f"python -m aios {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the engine refusing an option or a checkpoint (its message names the README section)
        if os.environ.get("AIOS_DEBUG"):
            raise
        print(f"python -m aios {args.command}: error: {exc}\n(AIOS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- bench (the headline figure, lessons 9-11)


def _args_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the 0.6b fixture, made once)")
    parser.add_argument("--preset", default="0.6b", help="fixture preset when --model is not given (default: 0.6b)")
    parser.add_argument("--batch1", action="store_true", help="decode speed of one sequence instead of throughput")
    parser.add_argument("--num-requests", type=int, default=256, help="requests in the workload (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (lesson 11 off)")
    parser.add_argument("--attention-backend", choices=["auto", "torch", "triton"], default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="shard the model over N GPUs, one process each (lesson 14; default: 1)")
    parser.add_argument("--pipeline-parallel-size", type=int, default=1, metavar="N",
                        help="cut the layers into N stages, N x TP processes (lesson 21; default: 1)")
    parser.add_argument("--profile", action="store_true", help="then profile 20 decode steps (torch.profiler)")
    parser.add_argument("--no-compile", action="store_true",
                        help="graphs without torch.compile of the norms, RoPE and SiLU (compile_elementwise=False)")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="overlap the host with the GPU (lesson 17; default: the engine's, on for CUDA)")
    parser.add_argument("--speculative-config", type=_json_dict, metavar="JSON",
                        help="speculative decoding (lesson 19); a draft gets random weights here too, so only n-gram "
                             "lookup is meaningful: aios.bench.speculative measures drafts at set acceptance rates")
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                        help="fp8: keys and values in float8 e4m3, a scale per layer (lesson 18; default: auto)")
    parser.add_argument("--compare-hf", nargs="?", const=32, type=int, metavar="N",
                        help="then both this engine and transformers' continuous batching on the first N requests "
                             "(default 32), outputs fixed at their mean length; prints the ratio")
    parser.add_argument("--json", dest="json_path", type=Path, metavar="FILE", help="also write the result here")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run_bench(args: argparse.Namespace) -> int:
    """Headline throughput (or batch-1 decode) of the engine with random weights (see aios.bench.throughput)."""
    from aios.bench.throughput import run_command

    if args.num_requests < 1:
        raise CliError("--num-requests must be >= 1")
    return run_command(args)


COMMANDS.append(Command("bench", "offline throughput of the engine on the headline workload (GPU; lessons 9-11)",
                        _args_bench, run_bench))


# ---------------------------------------------------------------- quantize (lesson 18)


def _args_quantize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", type=Path, help="float Qwen3 checkpoint folder")
    parser.add_argument("dst", metavar="DST", type=Path, help="folder to write the quantized checkpoint into")
    parser.add_argument("--method", choices=["int4", "int8", "fp8"], required=True,
                        help="int4: AWQ layout (group-wise, packed); int8: per-channel; fp8: 128x128 blocks (Qwen3-FP8)")
    parser.add_argument("--group-size", type=int, default=128, help="INT4 group along the input features (default 128)")
    parser.add_argument("--force", action="store_true", help="write even if DST is not empty")


def run_quantize(args: argparse.Namespace) -> int:
    """Write a pre-quantized checkpoint (see :mod:`aios.utils.quantize_checkpoint`)."""
    from aios.utils.quantize_checkpoint import quantize_checkpoint

    if not (args.src / "config.json").is_file():
        raise CliError(f"{args.src} is not a checkpoint folder (no config.json)")
    if args.dst.is_dir() and any(args.dst.iterdir()) and not args.force:
        raise CliError(f"{args.dst} is not empty; pass --force to write into it anyway")
    try:
        path = quantize_checkpoint(args.src, args.dst, args.method, args.group_size)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    print(f"wrote {args.method} checkpoint ({size / 2**20:.1f} MiB of tensors) to {path}")
    return 0


COMMANDS.append(Command("quantize", "write a pre-quantized (int4 AWQ, int8 or fp8) copy of a checkpoint (lesson 18)",
                        _args_quantize, run_quantize))
