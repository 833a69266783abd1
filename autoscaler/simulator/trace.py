"""Request traces: arrival time, prompt tokens, output tokens.

Two formats: the Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`, as published with
Splitwise, ISCA 2024) and JSONL with one object per line carrying `arrival` (seconds, or `timestamp`),
`prompt_tokens` and `output_tokens`. Arrivals are made relative to the first request and divided by the time scale,
so `time_scale=4` replays an hour in fifteen minutes at four times the rate.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    arrival: float  # seconds from the start of the trace
    prompt_tokens: int
    output_tokens: int


# The Azure LLM code trace as the workspace shares it: `shared/traces/` beside a source checkout (this file is
# <checkout>/autoscaler/simulator/trace.py under an editable install). Tests and benchmarks skip or say so when absent.
AZURE_CODE_TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "azure_llm_2023_code.csv"


class TraceError(ValueError):
    pass


def load_trace(path: str | Path, time_scale: float = 1.0) -> list[TraceRequest]:
    """Read a CSV or JSONL trace, sorted by arrival, starting at 0 and compressed by `time_scale`."""
    if time_scale <= 0:
        raise TraceError(f"time scale must be > 0, got {time_scale}")
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")
    rows = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else _read_csv(path)
    if not rows:
        raise TraceError(f"trace {path} has no requests")
    rows.sort(key=lambda r: r[0])
    start = rows[0][0]
    return [TraceRequest((t - start) / time_scale, p, o) for t, p, o in rows]


def _read_csv(path: Path) -> list[tuple[float, int, int]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise TraceError(f"{path}: CSV needs the columns {sorted(need)}, found {reader.fieldnames}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            try:
                rows.append(
                    (_seconds(rec["TIMESTAMP"]), _tokens(rec["ContextTokens"], 1), _tokens(rec["GeneratedTokens"], 1))
                )
            except ValueError as err:
                raise TraceError(f"{path}:{line}: {err}") from None
    return rows


def _read_jsonl(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    with path.open() as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
                when = rec["arrival"] if "arrival" in rec else rec["timestamp"]
                arrival = float(when) if isinstance(when, int | float) else _seconds(str(when))
                rows.append((arrival, _tokens(rec["prompt_tokens"], 1), _tokens(rec["output_tokens"], 1)))
            except (ValueError, KeyError, TypeError) as err:
                raise TraceError(
                    f"{path}:{line}: need arrival (or timestamp), prompt_tokens, output_tokens: {err}"
                ) from None
    return rows


def _seconds(stamp: str) -> float:
    """A number of seconds, or an ISO timestamp whose fraction may carry more than six digits (Azure's do)."""
    try:
        return float(stamp)
    except ValueError:
        pass
    head, _, frac = stamp.strip().partition(".")
    base = datetime.fromisoformat(head).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def _tokens(value: object, minimum: int) -> int:
    count = int(str(value))
    if count < minimum:
        raise ValueError(f"token count {count} is below {minimum}")
    return count


# docs/autoscaler-evaluation.md, section 2: the first 60% of a trace's time span tunes, the rest evaluates
TUNING_FRACTION = 0.6


@dataclass(frozen=True)
class Split:
    tuning: list[TraceRequest]  # arrivals before the cut, as in the trace
    evaluation: list[TraceRequest]  # arrivals at or after the cut, moved so the part starts at 0
    cut: float  # the cut, in the trace's own seconds
    offset: float = 0.0  # the evaluation part's first arrival, in the trace's own seconds: its new 0

    @property
    def before_evaluation(self) -> list[TraceRequest]:
        """The tuning part on the evaluation part's clock (negative arrivals): what its warm-up replays, so the
        fleet meets the evaluation part in the state its own control loop left it in."""
        return [TraceRequest(r.arrival - self.offset, r.prompt_tokens, r.output_tokens) for r in self.tuning]


def split(trace: list[TraceRequest], tuning_fraction: float = TUNING_FRACTION) -> Split:
    """Cut a trace by time into its tuning part and its evaluation part (never by request count: a burst must not
    move the cut)."""
    if not 0 < tuning_fraction < 1:
        raise TraceError(f"the tuning fraction must be in (0, 1), got {tuning_fraction}")
    if not trace:
        raise TraceError("cannot split an empty trace")
    ordered = sorted(trace, key=lambda r: r.arrival)
    first, last = ordered[0].arrival, ordered[-1].arrival
    cut = first + tuning_fraction * (last - first)
    tuning = [r for r in ordered if r.arrival < cut]
    rest = [r for r in ordered if r.arrival >= cut]
    if not tuning or not rest:
        raise TraceError(f"the cut at {cut:g}s leaves a part empty: a trace needs arrivals at more than one time")
    evaluation = [TraceRequest(r.arrival - rest[0].arrival, r.prompt_tokens, r.output_tokens) for r in rest]
    return Split(tuning, evaluation, cut, rest[0].arrival)
