"""`python -m infleet.runtime serve --model PATH_OR_URI ...` (also `infleet runtime serve ...`).

SIGTERM drains: new requests get 503 with Retry-After and `/health` turns 503 (so Kubernetes and the gateway stop
sending), requests in flight finish within `--shutdown-grace-seconds`, then the process exits 0.
A second SIGTERM, or SIGINT, stops at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import uvicorn

from infleet.api import speculative as spec
from infleet.api.tiers import TIERS
from infleet.runtime.config import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEVICES,
    KERNEL_BACKENDS,
    DeviceUnavailable,
    EngineConfig,
)
from infleet.runtime.engine.limits import DEFAULT_MAX_PREFILL_TOKENS, DEFAULT_SPECULATIVE_MAX_BATCH_SIZE

if TYPE_CHECKING:
    from infleet.runtime.engine.engine import AsyncEngine
    from infleet.runtime.server.app import ServerState, Serving

PROG = "infleet runtime"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="infleet's inference server")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model over HTTP (OpenAI, KServe v2, /health, /metrics)")
    s.add_argument("--model", required=True, help="a GGUF file or an HF model directory; file:// URIs accepted")
    s.add_argument("--served-name", help="the model name clients use (default: from the model)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--tier", choices=TIERS, default="bf16", help="weight quantization tier")
    s.add_argument("--tensor-parallel", type=int, default=1, metavar="N")
    s.add_argument("--pipeline-parallel", type=int, default=1, metavar="N")
    s.add_argument(
        "--micro-batches-per-stage",
        type=int,
        default=1,
        metavar="N",
        help="with pipeline parallelism, split each step into N x stages micro-batches (more: a smaller bubble, "
        "more fixed cost per micro-batch; default 1)",
    )
    s.add_argument("--max-batch-tokens", type=int, default=2048, metavar="N", help="token budget per engine step")
    s.add_argument(
        "--max-prefill-tokens-per-step",
        type=int,
        default=DEFAULT_MAX_PREFILL_TOKENS,
        metavar="N",
        help="prompt tokens per step at most; running decodes are scheduled first, prefill chunks fill the rest "
        f"(smaller: steadier inter-token latency, later first tokens; default {DEFAULT_MAX_PREFILL_TOKENS})",
    )
    s.add_argument("--max-model-len", type=int, default=None, metavar="N", help="context length (default: model's)")
    s.add_argument("--max-num-seqs", type=int, default=64, metavar="N", help="most sequences in one batch")
    s.add_argument("--max-waiting", type=int, default=256, metavar="N", help="waiting queue bound; beyond it 429")
    s.add_argument("--num-kv-blocks", type=int, default=None, metavar="N", help="KV-cache blocks (default: sized)")
    s.add_argument("--no-prefix-caching", action="store_true", help="turn automatic prefix caching off")
    s.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where weights, KV cache and sampling live (auto: CUDA if any)",
    )
    s.add_argument(
        "--kernels",
        choices=KERNEL_BACKENDS,
        default="auto",
        help="triton: infleet's Triton kernels (on CPU only under TRITON_INTERPRET=1); torch: PyTorch's; "
        "auto: Triton on CUDA, PyTorch on CPU",
    )
    s.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        metavar="F",
        help="share of the GPU's memory for weights and KV cache; the cache takes what the weights leave",
    )
    s.add_argument(
        "--kv-cache-memory",
        type=int,
        default=None,
        metavar="BYTES",
        help="KV-cache bytes on a CPU (default: a tenth of the memory limit, cgroup or machine)",
    )
    s.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode")
    s.add_argument(
        "--speculative-method",
        choices=spec.METHODS,
        default=None,
        help="speculative decoding: ngram drafts by prompt lookup, draft by a smaller model with the same tokenizer "
        "(--speculative-draft-model); default off",
    )
    s.add_argument(
        "--speculative-num-tokens",
        type=int,
        default=spec.DEFAULT_NUM_TOKENS,
        metavar="K",
        help=f"tokens drafted per step, {spec.MIN_NUM_TOKENS} to {spec.MAX_NUM_TOKENS} (default %(default)s)",
    )
    s.add_argument(
        "--speculative-draft-model",
        default=None,
        metavar="PATH",
        help="the draft model of method draft: a GGUF file or an HF directory, same tokenizer as --model",
    )
    s.add_argument(
        "--speculative-max-batch-size",
        type=int,
        default=DEFAULT_SPECULATIVE_MAX_BATCH_SIZE,
        metavar="N",
        help="no drafts in a step with more running decodes than this, where speculation stops paying "
        f"(default {DEFAULT_SPECULATIVE_MAX_BATCH_SIZE})",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="PyTorch intra-op threads (default: OMP_NUM_THREADS if set, else the pod's CPU limit from its cgroup "
        "quota, else the CPUs this process may run on)",
    )
    s.add_argument(
        "--enable-lora", action="store_true", help="serve LoRA adapters (each as its own model name) beside the base"
    )
    s.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="adapters to load at start: a PEFT directory, file:// URI, or hf://, s3://, gs://, https:// URI "
        "(fetched into --model-cache); needs --enable-lora",
    )
    s.add_argument(
        "--max-loras",
        type=int,
        default=4,
        metavar="N",
        help="adapters resident on the device at once, and distinct adapters in one batch (default %(default)s)",
    )
    s.add_argument(
        "--max-lora-rank", type=int, default=16, metavar="R", help="the largest adapter rank (default %(default)s)"
    )
    s.add_argument(
        "--model-cache",
        default=None,
        metavar="DIR",
        help="where adapters given as remote URIs are fetched to (default: $INFLEET_MODEL_CACHE, else none)",
    )
    s.add_argument("--shutdown-grace-seconds", type=float, default=30.0, metavar="S")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument("--access-log", action="store_true", help="log every request")
    return p


def model_path(uri: str) -> Path:
    """A local path from a path or a file:// URI; anything else is a ValueError with the reason."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names host {parsed.netloc!r}; only local files are supported")
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive, not a URI
        raise ValueError(f"model URI scheme {parsed.scheme!r} is not supported; give a local path or file:// URI")
    else:
        path = Path(uri).expanduser()
    if not path.exists():
        raise ValueError(f"model path {str(path)!r} does not exist")
    return path


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains instead of closing the listener straight away."""

    def __init__(self, config: uvicorn.Config, state: ServerState, grace_seconds: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_seconds = grace_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_deadline is None:
            self.state.draining = True
            self.drain_deadline = time.monotonic() + self.grace_seconds
            logging.getLogger("infleet.runtime").info(
                "SIGTERM: draining %d request(s), at most %.0fs", self.state.in_flight, self.grace_seconds
            )
            return
        # SIGINT, or a second SIGTERM: stop now (uvicorn cancels what is left after its own short timeout)
        self.state.draining = True
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and (self.state.in_flight == 0 or time.monotonic() >= self.drain_deadline):
            self.should_exit = True
        return await super().on_tick(counter)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The flags' EngineConfig, resolved ("auto" -> what this machine has); ValueError/DeviceUnavailable."""
    return EngineConfig(
        model=args.model,
        tier=args.tier,
        device=args.device,
        kernels=args.kernels,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory=args.kv_cache_memory,
        enforce_eager=args.enforce_eager,
        num_kv_blocks=args.num_kv_blocks,
        prefix_caching=not args.no_prefix_caching,
        max_batch_tokens=args.max_batch_tokens,
        max_prefill_tokens=args.max_prefill_tokens_per_step,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_waiting=args.max_waiting,
        tensor_parallel=args.tensor_parallel,
        pipeline_parallel=args.pipeline_parallel,
        micro_batches_per_stage=args.micro_batches_per_stage,
        speculative_method=args.speculative_method,
        speculative_num_tokens=args.speculative_num_tokens,
        speculative_draft_model=args.speculative_draft_model,
        speculative_max_batch_size=args.speculative_max_batch_size,
        threads=args.threads,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        lora_modules=lora_modules(args.lora_modules),
        model_cache=args.model_cache or os.environ.get("INFLEET_MODEL_CACHE") or None,
    ).resolve()


def lora_modules(values: list[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=PATH` pairs of --lora-modules; ValueError naming a malformed one."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules: expected NAME=PATH, got {value!r}")
        pairs.append((name, path))
    return tuple(pairs)


def serve(args: argparse.Namespace) -> int:
    if args.port < 1:
        print(f"{PROG}: --port must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = engine_config(args)
    except (ValueError, DeviceUnavailable) as e:  # e.g. --device cuda without CUDA: one line, no fall-back
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        cfg.model = str(model_path(cfg.model))
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1

    if cfg.tensor_parallel > 1 or cfg.pipeline_parallel > 1:
        from infleet.runtime.parallel.launch import serve_parallel

        return serve_parallel(cfg, args)
    try:
        listener = listen(args.host, args.port)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    with listener:  # closed on every way out, a failed load included
        return serve_one_process(cfg, args, listener)


def serve_one_process(cfg: EngineConfig, args: argparse.Namespace, listener: socket.socket) -> int:
    """Load the model and serve it on `listener` (bound by `serve`); exit code."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from infleet.runtime.threads import apply_threads

    try:
        threads = apply_threads(cfg.threads)  # before loading: dequantizing the weights uses them too
    except ValueError as e:  # a bad OMP_NUM_THREADS
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    # heavy imports only once the arguments are known to be good
    from infleet.runtime.engine.engine import AsyncEngine
    from infleet.runtime.metrics import RuntimeMetrics
    from infleet.runtime.server.app import Serving

    metrics = RuntimeMetrics(args.served_name or Path(cfg.model).stem, cfg.tier)
    try:
        engine = AsyncEngine.from_config(cfg, metrics)
    except Exception as e:  # one clear line, not a traceback: the operator shows it as the pod's failure
        from infleet.runtime.lora.adapter import LoRAError

        if isinstance(e, LoRAError):
            message = f"--lora-modules: {e}"
        else:
            message = str(e) if "cannot load" in str(e) else f"cannot load model {cfg.model!r}: {e}"
        print(f"{PROG}: {message}", file=sys.stderr)
        return 1
    served_name = args.served_name or engine.model_name
    if engine.lora is not None and engine.lora.has(served_name):
        print(f"{PROG}: --lora-modules: adapter name {served_name!r} is the base model's served name", file=sys.stderr)
        return 2
    metrics.rename(served_name)  # label series with the name clients use
    log_startup(served_name, engine, threads.source)
    metrics.set_execution(engine.execution)
    for adapter in engine.lora.adapters() if engine.lora is not None else []:
        metrics.adapter_loaded(adapter.name)
    return run_http(Serving(engine=engine, served_name=served_name, metrics=metrics), args, listener)


def log_startup(name: str, engine: AsyncEngine, threads_source: str = "") -> None:
    """One line saying how the model computes and how big the KV cache is (checked by tests and operators)."""
    execution, budget = engine.execution, engine.kv_budget
    weights = ",".join(map(str, execution["weight_dtypes"]))  # type: ignore[call-overload]
    logging.getLogger("infleet.runtime").info(
        "serving %s: tier %s on %s, compute %s, weights %s, kernels %s (attention %s, gemm %s), cuda graphs %s, "
        "%s threads%s; KV cache %d blocks%s",
        name, engine.tier, execution["device"], execution["compute_dtype"], weights,
        execution["kernel_backend"], execution["attention"], execution["gemm"],
        "on" if execution["cuda_graphs"] else "off", execution["threads"],
        f" ({threads_source})" if threads_source else "", engine.num_kv_blocks,
        f" ({budget})" if budget else "",
    )  # fmt: skip


def listen(host: str, port: int) -> socket.socket:
    """The HTTP socket, listening before the model loads: a port in use fails at once, and no process started later
    (a parallel group's ranks open ephemeral ports) can take the port first. A request that arrives while the model
    loads waits in the backlog and is answered once the server starts. ValueError if it cannot listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {os.strerror(e.errno) if e.errno else e}") from e


def run_http(serving: Serving, args: argparse.Namespace, listener: socket.socket) -> int:
    """Serve the HTTP APIs on `listener` until SIGTERM has drained them (one process or a parallel group's leader);
    exit code."""
    from infleet.runtime.server.app import build_app

    config = uvicorn.Config(
        build_app(serving),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = DrainingServer(config, serving.state, args.shutdown_grace_seconds)
    server.run(sockets=[listener])
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
