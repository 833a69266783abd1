"""KV-aware routing against least outstanding and the character-hash ring, on real runtime replicas.

`--replicas` runtime processes (SmolLM2-135M GGUF, tier int8, one intra-op thread each, a fixed KV cache of
`--kv-blocks` blocks) serve behind three real gateway processes, one per arm:

- `leastOutstanding`: `infleet gateway run --routing leastOutstanding`;
- `ring`: `--routing prefixAffinity --no-kv-routing`, the first 256 characters on a bounded-load ring;
- `kvAware`: `--routing prefixAffinity`, the replicas' published cache state (`/kv/events`).

The workload shares long contexts the way applications do (every text is generated per run from a seed, so no run
finds another run's blocks in a cache, and every arm sees the same structure):

- `chat`: multi-turn conversations, each pasting its own ticket log (`--context-tokens`) after the application's
  system prompt; a turn is sent when the previous one has answered (scripted assistant turns keep every arm's
  prompts equal);
- `fewshot`: the same system prompt, then one of a few long blocks of answered examples, then a question;
- `header`: a per-customer profile first, so that contexts differ in their first 256 characters, then a long manual
  shared by all customers, then a question; each customer asks several.

`chat` and `fewshot` share their first 256 characters (the system prompt) although their long contexts differ:
the ring hashes them all to one key. A `header` context can only be reused by its own customer: a prefix cache
cannot reuse the manual behind a different profile, whatever the router does.

By default each run starts from the steady state an application's traffic leaves behind: before the measured
requests, one unmeasured request per long context (its context and a warm-up question) goes through the arm's own
gateway, one after another, so each router has placed every context once and the first prefill of a context is not
what the run measures (`--no-warmup`: every context arrives cold, inside the measured window). The contexts of one
run (9 of about 1,000 tokens by default) fit the replicas' caches together (3 x 256 blocks of 16 tokens), not one cache.

Arrivals are an open-loop Poisson schedule (`--rate`); arms take turns in every repeat (the order rotates). Each
run records time to first token (streamed, official `openai` client), throughput, the prefix-cache hit rate from
the replicas' own counters (`infleet_prefix_cache_hits_total / infleet_prefix_cache_queries_total`), and the hit
rate of an oracle that knows every cache: the run's requests, in the order they were sent, replayed against one
simulated cache per replica (the runtime's own `BlockManager`, same block size and capacity), each request going to
the replica holding the longest prefix of it among those within the gateway's load bound. `goals()` judges the
issue's three goals over the repeats (medians; every repeat for the header contexts) and can say "not met".

    python benchmarks/routing.py [--replicas 3] [--repeats 3] [--context-tokens 1024] [--no-warmup]
                                 [--out benchmarks/results/routing.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from infleet.gateway.kv import PromptHasher
from infleet.gateway.routing import DEFAULT_EPS
from infleet.runtime.engine.kv_cache import BlockManager
from infleet.runtime.engine.sampler import SamplingParams
from infleet.runtime.engine.sequence import Sequence as EngineSequence
from infleet.runtime.server.launch import ServerProcess, free_port

MODEL = "smollm2"
ARMS = {
    "leastOutstanding": ["--routing", "leastOutstanding"],
    "ring": ["--routing", "prefixAffinity", "--no-kv-routing"],
    "kvAware": ["--routing", "prefixAffinity"],
}
CLASSES = ("chat", "fewshot", "header")
GOALS = {"hit_rate_vs_oracle": 0.9, "ttft_p99_vs_least_outstanding": 0.5}  # at least, at most
VOCABULARY = (
    "replica gateway cache block prefix token request latency deployment operator cluster queue budget shard "
    "tenant model weight kernel batch stream metric alert rollout canary region zone quota ticket invoice refund "
    "account plan upgrade outage status release config secret volume node pod service endpoint router schedule "
    "retry timeout error warning invoice storage backup restore policy audit report customer support engineer"
)
WORDS = VOCABULARY.split()
QUESTIONS = (
    "Which section covers this case?",
    "Summarise the relevant rule in one sentence.",
    "What should I do next?",
    "Is this covered by my plan?",
    "Who should I contact about it?",
    "How long will it take?",
)
WARMUP_QUESTION = "Please read this first; questions follow."


# ---- the workload -------------------------------------------------------------------------------------------------


def prose(rng: random.Random, tokens: int, tag: str) -> str:
    """Numbered sentences of about `tokens` tokens (SmolLM2's BPE: about 1.4 tokens per word here)."""
    out, n, i = [], 0, 0
    while n < tokens:
        words = rng.choices(WORDS, k=rng.randint(8, 14))
        sentence = f"{tag}.{i}: The {' '.join(words)}."
        out.append(sentence)
        n += round(1.4 * len(words)) + 6
        i += 1
    return " ".join(out)


def system_prompt(salt: str) -> str:
    """The application's system prompt: longer than 256 characters, so its first 256 say nothing of what follows."""
    return (
        f"You are Atlas, the support assistant of Company {salt}. Answer in at most two sentences, cite the section "
        "you used, never invent account data, escalate billing disputes to a human, and keep a friendly, concise "
        "tone. Policies: refunds within 30 days, priority support for enterprise plans, outages on the status page."
    )


@dataclass
class Item:
    """What arrives at one time: a single request, or a conversation whose turns follow each other."""

    cls: str
    context: str  # the long context it reuses
    turns: list[list[dict[str, str]]]
    warmup: list[dict[str, str]]  # a request that puts the context in a cache (the steady state's earlier traffic)


def workload(seed: int, context_tokens: int, contexts: int, per_context: int) -> list[Item]:
    """One run's requests, in arrival order; every text is new for each seed."""
    rng = random.Random(seed)
    salt = f"{seed:08x}"
    system = system_prompt(salt)
    items: list[Item] = []

    def questions(cls: str, c: int, context_text: str) -> None:
        """`per_context` requests that each send the long context as the system prompt, then one question."""
        context = [{"role": "system", "content": context_text}]
        warm = [*context, {"role": "user", "content": WARMUP_QUESTION}]
        for q in range(per_context):
            user = QUESTIONS[(c + q) % len(QUESTIONS)]
            items.append(Item(cls, f"{cls}{c}", [[*context, {"role": "user", "content": user}]], warm))

    for c in range(contexts):  # chat: the system prompt, a ticket log, then turns
        ticket = f"Here is the log of my ticket {salt}-{c}:\n{prose(rng, context_tokens, f'log{c}')}\n\n"
        messages = [{"role": "system", "content": system}]
        turns = []
        for t in range(per_context):
            question = QUESTIONS[(c + t) % len(QUESTIONS)]
            messages = [*messages, {"role": "user", "content": ticket + question if t == 0 else question}]
            turns.append(messages)
            messages = [*messages, {"role": "assistant", "content": f"Section {t + 1} of the log covers it."}]
        warm = [{"role": "system", "content": system}, {"role": "user", "content": ticket + WARMUP_QUESTION}]
        items.append(Item("chat", f"chat{c}", turns, warm))
    for c in range(contexts):  # fewshot: the system prompt, a block of answered examples, a question
        examples = prose(rng, context_tokens, f"example{c}")
        questions("fewshot", c, f"{system}\n\nAnswered tickets to follow:\n{examples}")
    manual = prose(rng, context_tokens, "manual")
    for c in range(contexts):  # header: a customer's profile first, then the manual everyone shares
        plan, region = rng.choice(("free", "team", "enterprise")), rng.choice(("eu-west", "us-east", "ap-south"))
        profile = (
            f"Customer {salt}-{c} (account {rng.randrange(10**8):08d}, plan {plan}, region {region}, "
            f"{rng.randint(1, 9)} open tickets). Product manual:\n{manual}"
        )
        questions("header", c, profile)
    rng.shuffle(items)
    return items


# ---- one run ------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    cls: str
    context: str
    sent: float  # seconds after the run's start
    ttft: float | None = None
    end: float | None = None
    output_tokens: int = 0
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)  # the prompt as the replicas tokenize it (for the oracle)


async def send(client: openai.AsyncOpenAI, messages: list[dict[str, str]], rec: Record, t0: float, out: int) -> None:
    rec.sent = time.perf_counter() - t0
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=out, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        async for chunk in stream:
            if rec.ttft is None and chunk.choices:
                rec.ttft = time.perf_counter() - t0 - rec.sent
            if chunk.usage:
                rec.output_tokens = chunk.usage.completion_tokens
    except openai.APIError as e:
        rec.error = f"{type(e).__name__}: {e}"
    rec.end = time.perf_counter() - t0


async def drive(url: str, items: list[Item], rate: float, seed: int, out: int, hasher: PromptHasher) -> list[Record]:
    """Send the items on a Poisson schedule (a conversation's later turns after the earlier ones answer)."""
    rng = random.Random(seed ^ 0x5EED)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=900)
    records: list[Record] = []
    t0 = time.perf_counter()

    async def play(item: Item, at: float) -> None:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
        for messages in item.turns:
            rec = Record(item.cls, item.context, 0.0, token_ids=hasher.token_ids({"messages": messages}) or [])
            records.append(rec)
            await send(client, messages, rec, t0, out)

    at, tasks = 0.0, []
    for item in items:
        tasks.append(asyncio.create_task(play(item, at)))
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    await client.close()
    return sorted(records, key=lambda r: r.sent)


async def warm_up(url: str, items: list[Item], hasher: PromptHasher) -> list[list[int]]:
    """The steady state's earlier traffic, unmeasured: one request per long context, one after another, through the
    arm's own gateway, so its router places them. Returns their prompts as the replicas tokenize them."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=900)
    seen: set[str] = set()
    prompts: list[list[int]] = []
    for item in items:
        if item.context not in seen:
            seen.add(item.context)
            await client.chat.completions.create(model=MODEL, messages=item.warmup, max_tokens=1, temperature=0)  # type: ignore[arg-type]
            prompts.append(hasher.token_ids({"messages": item.warmup}) or [])
    await client.close()
    return prompts


def prefix_counters(urls: Sequence[str]) -> tuple[float, float]:
    """Prompt tokens looked up in, and served from, the replicas' prefix caches (summed)."""
    queries = hits = 0.0
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
            for s in family.samples:
                if s.name == "infleet_prefix_cache_queries_total":
                    queries += s.value
                elif s.name == "infleet_prefix_cache_hits_total":
                    hits += s.value
    return queries, hits


def gateway_counters(url: str) -> dict[str, float]:
    """The gateway's routing decisions by strategy and affinity result (for reading a run, not for the goals)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "infleet_gateway_routing_decisions_total":
                out[s.labels["strategy"]] = out.get(s.labels["strategy"], 0.0) + s.value
            elif s.name == "infleet_gateway_prefix_affinity_total":
                out[s.labels["result"]] = out.get(s.labels["result"], 0.0) + s.value
    return out


# ---- the oracle ---------------------------------------------------------------------------------------------------


def oracle_hit_rate(
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[int],
    replicas: int,
    num_blocks: int,
    block_size: int,
    counted_from: int = 0,
) -> float:
    """The prefix-cache hit rate if every request went to the replica caching the longest prefix of it (among those
    whose request count stays within the gateway's load bound; ties to the fewest requests), replayed in order
    against the runtime's own block manager per replica (hashing, capacity, LRU eviction). Generated tokens take
    cache blocks as they do in the runtime (their ids are placeholders: no later prompt reuses them). Requests before
    `counted_from` (a warm-up) fill the caches and count toward the load bound, not toward the rate."""
    caches = [BlockManager(num_blocks, block_size) for _ in range(replicas)]
    counts = [0] * replicas
    queries = hits = 0
    for i, (ids, generated) in enumerate(zip(prompts, outputs, strict=True)):
        if not ids:
            continue
        bound = math.ceil((1 + DEFAULT_EPS) * (sum(counts) + 1) / replicas)
        scored = [(cached_tokens(c, ids), -counts[r], r) for r, c in enumerate(caches) if counts[r] < bound]
        _, _, r = max(scored)
        counts[r] += 1
        seq = EngineSequence(f"oracle-{i}", [*ids, *([-1 - i] * generated)], len(ids), SamplingParams())
        bm = caches[r]
        hit = bm.match_prefix(seq)
        if i >= counted_from:
            hits, queries = hits + hit, queries + len(ids)
        if not bm.allocate(seq, seq.num_uncomputed_tokens):
            raise ValueError(f"a prompt of {seq.num_tokens} tokens does not fit {num_blocks} blocks")
        seq.num_computed_tokens = seq.num_tokens
        bm.commit_full_blocks(seq)
        bm.free_sequence(seq)
    return hits / queries if queries else 0.0


def cached_tokens(bm: BlockManager, ids: Sequence[int]) -> int:
    """Prompt tokens the block manager would serve from its cache (as `match_prefix`, without taking them)."""
    probe = EngineSequence("probe", list(ids), len(ids), SamplingParams())
    saved = (bm.prefix_queries, bm.prefix_hits, dict(bm.free))
    n = bm.match_prefix(probe)
    bm.free_sequence(probe)
    bm.prefix_queries, bm.prefix_hits = saved[0], saved[1]
    bm.free.clear()
    bm.free.update(saved[2])  # the probe must not refresh the blocks' places in the LRU order
    return n


# ---- statistics and goals -----------------------------------------------------------------------------------------


def quantile(xs: Sequence[float], q: float) -> float:
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def run_figures(records: list[Record], hit: tuple[float, float], oracle: float) -> dict[str, Any]:
    ok = [r for r in records if r.error is None and r.ttft is not None and r.end is not None]
    span = max(r.end for r in ok if r.end is not None) - min(r.sent for r in records) if ok else float("nan")
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    by_class = {}
    for cls in CLASSES:
        xs = [r.ttft for r in ok if r.cls == cls and r.ttft is not None]
        if xs:
            by_class[cls] = {"requests": len(xs), "ttft_p50_s": quantile(xs, 0.5), "ttft_p99_s": quantile(xs, 0.99)}
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "prompt_tokens": sum(len(r.token_ids) for r in records),
        "hit_rate": hit[1] / hit[0] if hit[0] else 0.0,
        "oracle_hit_rate": oracle,
        "ttft_p50_s": quantile(ttfts, 0.5) if ttfts else float("nan"),
        "ttft_p99_s": quantile(ttfts, 0.99) if ttfts else float("nan"),
        "requests_per_second": len(ok) / span,
        "output_tokens_per_second": sum(r.output_tokens for r in ok) / span,
        "by_class": by_class,
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": list(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median with min-max over the repeats of one arm."""
    keys = ("hit_rate", "oracle_hit_rate", "ttft_p50_s", "ttft_p99_s")
    keys += ("requests_per_second", "output_tokens_per_second")
    out: dict[str, Any] = {k: spread([r[k] for r in runs]) for k in keys}
    out["failed"] = sum(r["failed"] for r in runs)
    out["by_class"] = {
        cls: {k: spread([r["by_class"][cls][k] for r in runs]) for k in ("ttft_p50_s", "ttft_p99_s")}
        for cls in CLASSES
        if all(cls in r["by_class"] for r in runs)
    }
    return out


def goals(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's goals, each with the measured value and met True/False.

    "Better than the ring on contexts that differ in their first 256 characters" is judged on the `header` contexts'
    TTFT over the repeats: a lower p99 in every repeat (kvAware's worst repeat below the ring's best), and a p50 no
    worse (kvAware's best repeat not above the ring's worst). Both routers keep a customer on one replica, so the p50
    of these contexts is a cached prefill for both and only the tail, where one router queues them behind another
    context's prefills, can separate them."""
    kv, lo, ring = arms["kvAware"], arms["leastOutstanding"], arms["ring"]
    ratio = kv["hit_rate"]["median"] / kv["oracle_hit_rate"]["median"] if kv["oracle_hit_rate"]["median"] else 0.0
    p99 = kv["ttft_p99_s"]["median"] / lo["ttft_p99_s"]["median"]
    header_kv, header_ring = kv["by_class"].get("header", {}), ring["by_class"].get("header", {})
    if {"ttft_p50_s", "ttft_p99_s"} <= header_kv.keys() & header_ring.keys():
        tail_lower = header_kv["ttft_p99_s"]["max"] < header_ring["ttft_p99_s"]["min"]
        p50_no_worse = header_kv["ttft_p50_s"]["min"] <= header_ring["ttft_p50_s"]["max"]
        value = {
            f"{q}_s": {"kvAware": header_kv[f"ttft_{q}_s"], "ring": header_ring[f"ttft_{q}_s"]} for q in ("p50", "p99")
        }
    else:  # no header contexts in this run: nothing to judge on
        tail_lower = p50_no_worse = False
        value = {}
    bound_hit, bound_p99 = GOALS["hit_rate_vs_oracle"], GOALS["ttft_p99_vs_least_outstanding"]
    return {
        "hit_rate_vs_oracle": {"goal": f">= {bound_hit}", "value": ratio, "met": ratio >= bound_hit},
        "ttft_p99_vs_least_outstanding": {"goal": f"<= {bound_p99}", "value": p99, "met": p99 <= bound_p99},
        "header_ttft_vs_ring": {
            "goal": "header contexts: kvAware's TTFT p99 below the ring's in every repeat, its p50 no worse",
            "value": value,
            "p99_lower_in_every_repeat": tail_lower,
            "p50_no_worse": p50_no_worse,
            "met": tail_lower and p50_no_worse,
        },
    }


# ---- processes ----------------------------------------------------------------------------------------------------


class Gateway:
    """`infleet gateway run` in front of the replicas, with one arm's routing flags."""

    def __init__(self, replicas: Sequence[str], flags: list[str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile(prefix="infleet-gateway-", suffix=".log", delete=False)  # noqa: SIM115
        port = self.url.rsplit(":")[-1]
        cmd = [sys.executable, "-m", "infleet.gateway", "run", "--host", "127.0.0.1", "--port", port,
               "--upstream", f"{MODEL}={','.join(replicas)}", "--log-level", "warning", *flags]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(240):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"the gateway did not start:\n{Path(self.log.name).read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def warm_kv(gateway: Gateway, timeout: float = 120.0) -> None:
    """Until the KV-aware gateway routes on published cache state: its first requests start the subscriptions and
    the tokenizer fetch (routing on the ring meanwhile), and a subscription no request needed for IDLE_SECONDS (the
    other arms' runs) has stopped."""
    deadline = time.monotonic() + timeout
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    before = gateway_counters(gateway.url).get("kvAware", 0)
    while gateway_counters(gateway.url).get("kvAware", 0) == before:
        if time.monotonic() > deadline:
            raise TimeoutError("the KV-aware gateway never routed on the replicas' cache state")
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=300).raise_for_status()
        time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--context-tokens", type=int, default=1024, help="each long context (the issue: 1-4k)")
    p.add_argument("--contexts", type=int, default=3, help="long contexts per class")
    p.add_argument("--per-context", type=int, default=4, help="requests (chat: turns) per context")
    p.add_argument(
        "--warmup", action=argparse.BooleanOptionalAction, default=True,
        help="send each long context once, unmeasured, before the measured requests (the steady state)",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=0.2, help="arrivals per second (a conversation is one)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--kv-blocks", type=int, default=256, help="each replica's KV cache, in 16-token blocks")
    p.add_argument("--tier", default="int8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/routing.json"))
    args = p.parse_args()
    if args.replicas < 2 or min(args.repeats, args.contexts, args.per_context, args.context_tokens) < 1:
        p.error("--replicas must be at least 2; --repeats, --contexts, --per-context, --context-tokens at least 1")

    from infleet.runtime.loader.smollm2 import smollm2_gguf

    flags = ["--served-name", MODEL, "--tier", args.tier, "--threads", "1", "--num-kv-blocks", str(args.kv_blocks),
             "--max-model-len", "4096", "--max-num-seqs", "4", "--log-level", "warning"]  # fmt: skip
    servers = [ServerProcess(smollm2_gguf(), *flags) for _ in range(args.replicas)]
    gateways: dict[str, Gateway] = {}
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    try:
        print(f"== starting {args.replicas} runtime replicas ({args.tier}, 1 thread each)", flush=True)
        with ThreadPoolExecutor(args.replicas) as pool:
            list(pool.map(ServerProcess.start, servers))
        urls = [s.url for s in servers]
        hasher = PromptHasher.from_json(httpx.get(f"{urls[0]}/kv/tokenizer", timeout=60).json())
        for arm, arm_flags in ARMS.items():
            gateways[arm] = Gateway(urls, arm_flags)
        arms = list(ARMS)
        for rep in range(args.repeats):
            order = arms[rep % len(arms) :] + arms[: rep % len(arms)]
            for k, arm in enumerate(order):
                seed = args.seed * 1000 + rep * len(arms) + k  # new texts every run: no run reuses another's cache
                items = workload(seed, args.context_tokens, args.contexts, args.per_context)
                if arm == "kvAware":
                    warm_kv(gateways[arm])
                warm = asyncio.run(warm_up(gateways[arm].url, items, hasher)) if args.warmup else []
                before, routed = prefix_counters(urls), gateway_counters(gateways[arm].url)
                records = asyncio.run(drive(gateways[arm].url, items, args.rate, seed, args.max_tokens, hasher))
                after, routed_after = prefix_counters(urls), gateway_counters(gateways[arm].url)
                load.append(os.getloadavg()[0])
                oracle = oracle_hit_rate(
                    [*warm, *(r.token_ids for r in records)], [1] * len(warm) + [r.output_tokens for r in records],
                    args.replicas, args.kv_blocks, hasher.block_size, counted_from=len(warm),
                )  # fmt: skip
                fig = run_figures(records, (after[0] - before[0], after[1] - before[1]), oracle)
                fig["routing"] = {k: v - routed.get(k, 0.0) for k, v in routed_after.items() if v - routed.get(k, 0.0)}
                fig["load_average"] = load[-1]
                runs[arm].append(fig)
                print(
                    f"   repeat {rep} {arm:16} hit {fig['hit_rate']:.1%} (oracle {oracle:.1%})  TTFT p50 "
                    f"{fig['ttft_p50_s']:.2f} s p99 {fig['ttft_p99_s']:.2f} s  {fig['requests_per_second']:.2f} "
                    f"req/s  failed {fig['failed']}  load {load[-1]:.1f}  {fig['routing']}",
                    flush=True,
                )
    finally:
        for g in gateways.values():
            g.stop()
        for s in servers:
            s.stop()
    summary = {arm: summarise(rs) for arm, rs in runs.items()}
    verdicts = goals(summary)
    for key, g in verdicts.items():
        v = g["value"]
        value = json.dumps(v) if isinstance(v, dict) else f"{v:.2f}"
        print(f"   goal {key} {g['goal']}: {value} -> {'met' if g['met'] else 'NOT met'}", flush=True)
    result = {
        "machine": f"{os.cpu_count()} cores, shared",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "model": "SmolLM2-135M-Instruct Q4_1 GGUF",
            "threads_per_replica": 1,
            "block_size": hasher.block_size,
        },
        "load_average": {"min": min(load), "max": max(load), "samples": load},
        "arms": summary,
        "runs": runs,
        "goals": verdicts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
