"""Token rate limits across gateway replicas: each replica also counts the tokens its peers charged, so a team's
limit per minute is the fleet's, not each replica's (two replicas would otherwise let a team use it twice).

Every `every` seconds a thread resolves each peer name (`--peers NAME:PORT`; the chart's headless Service, which
DNS answers with one address per ready gateway pod), asks every address `GET /internal/team-tokens` for the tokens
that replica has charged each team since it started, and hands what each peer gained since the last ask to the
event loop (`Budgets.debit`), which takes it from this replica's buckets. A replica is known by the id it answers
with: its own address answers with its own id and is skipped, and a peer seen for the first time only sets a
baseline, so a replica that starts does not take in a peer's past. A team can overshoot by what the other replicas
serve it within one interval, plus the requests already in flight (as with one replica).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from infleet.gateway.budgets import Budgets

log = logging.getLogger("infleet.gateway.peers")

PATH = "/internal/team-tokens"
EVERY = 1.0
FORGET_AFTER = 300.0  # seconds a peer may go unanswered before its baseline is dropped
Tokens = dict[str, tuple[int, int]]  # team -> (input, output) tokens


@dataclass
class PeerTokens:
    """The last totals each peer replica reported, and when: what it gained since is what is new."""

    seen: dict[str, tuple[float, Tokens]] = field(default_factory=dict)

    def gained(self, replica: str, totals: Mapping[str, tuple[int, int]], now: float) -> Tokens:
        before = self.seen.get(replica)
        self.seen[replica] = (now, dict(totals))
        if before is None:
            return {}
        gained = {}
        for team, (i, o) in totals.items():
            was_i, was_o = before[1].get(team, (0, 0))
            di, do = max(0, i - was_i), max(0, o - was_o)
            if di or do:
                gained[team] = (di, do)
        return gained

    def forget(self, now: float) -> None:
        self.seen = {r: s for r, s in self.seen.items() if now - s[0] <= FORGET_AFTER}


def split(peer: str) -> tuple[str, int]:
    """`NAME:PORT` -> (NAME, PORT); ValueError for anything else."""
    host, _, port = peer.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{peer!r}: expected NAME:PORT")
    return host, int(port)


def addresses(peer: str) -> list[str]:
    """`NAME:PORT` -> a base URL per address NAME resolves to (each ready pod of a headless Service)."""
    host, port = split(peer)
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ips = dict.fromkeys(str(info[4][0]) for info in found)
    return [f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}" for ip in ips]


def report(replica: str, charged: Mapping[str, tuple[int, int]]) -> dict[str, object]:
    """The body of `GET /internal/team-tokens`."""
    return {"replica": replica, "teams": {team: list(tokens) for team, tokens in charged.items()}}


def parse(body: object) -> tuple[str, Tokens]:
    """`report`'s body back; raises ValueError on anything else."""
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("replica"), str)
        or not isinstance(body.get("teams"), dict)
    ):
        raise ValueError(f"not a team-tokens report: {str(body)[:200]}")
    teams: Tokens = {}
    for team, tokens in body["teams"].items():
        if not (isinstance(tokens, list) and len(tokens) == 2 and all(isinstance(n, int) for n in tokens)):
            raise ValueError(f"team {team!r}: tokens must be [input, output] integers")
        teams[str(team)] = (tokens[0], tokens[1])
    return body["replica"], teams


def follow_peers(budgets: Budgets, peers: list[str], replica: str, every: float = EVERY) -> Callable[[], None]:
    """Start (from the app's start-up, on its loop) the thread that reads the peers' charged tokens; nothing without
    peers."""

    def start() -> None:
        if not peers:
            return
        loop = asyncio.get_running_loop()

        def hand(callback: Callable[..., object], *args: object) -> bool:
            """Run on the loop; False once the loop is closed (the app stopped): the thread ends."""
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:
                return False
            return True

        def follow() -> None:
            state, warned = PeerTokens(), 0.0
            with httpx.Client(timeout=max(every, 0.5)) as client:
                while not loop.is_closed():
                    reached, failures = 0, []
                    for peer in peers:
                        try:
                            urls = addresses(peer)
                        except (OSError, ValueError) as e:
                            failures.append(f"{peer}: {e}")
                            continue
                        for url in urls:
                            try:
                                r = client.get(url + PATH)
                                r.raise_for_status()
                                other, totals = parse(r.json())
                            except (httpx.HTTPError, ValueError) as e:
                                failures.append(f"{url}: {e}")
                                continue
                            if other == replica:
                                continue
                            reached += 1
                            if gained := state.gained(other, totals, time.monotonic()):
                                hand(budgets.debit, gained)
                    state.forget(time.monotonic())
                    if not hand(budgets.metrics.peers.set, reached):
                        return
                    if failures and time.monotonic() - warned > 60:
                        warned = time.monotonic()
                        log.warning("gateway peers not read (their tokens are not in this replica's limits): %s",
                                    "; ".join(failures[:5]))  # fmt: skip
                    time.sleep(every)

        threading.Thread(target=follow, name="infleet-gateway-peers", daemon=True).start()

    return start
