"""`infleet logs POD [-n NS] [-c CONTAINER] [-f]`: the output of a pod the local launcher runs, read from its log
file (`kubectl logs` serves the same file through KWOK)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from infleet.cluster.controlplane import Fleet
from infleet.cluster.launcher import log_text


def pod_log(pods_dir: Path, namespace: str, pod: str, container: str | None) -> Path:
    """The newest log of that pod (a recreated pod with the same name has a new uid, so a new folder)."""
    dirs = sorted(pods_dir.glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        raise SystemExit(f"infleet: no launched pod {namespace}/{pod} (only infleet/* images run as local processes)")
    logs = sorted(dirs[-1].glob(f"{container or '*'}.log"))
    if not logs:
        raise SystemExit(f"infleet: pod {namespace}/{pod} has no container log {container or ''}".rstrip())
    if len(logs) > 1:
        names = ", ".join(p.stem for p in logs)
        raise SystemExit(f"infleet: pod {namespace}/{pod} has several containers ({names}): choose one with -c")
    return logs[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet logs")
    parser.add_argument("pod")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("-c", "--container", default=None)
    parser.add_argument("-f", "--follow", action="store_true")
    args = parser.parse_args(argv)
    path = pod_log(Fleet().dir / "pods", args.namespace, args.pod, args.container)
    with open(path, errors="replace") as f:
        sys.stdout.writelines(log_text(line.rstrip("\n")) + "\n" for line in f)
        while args.follow:
            line = f.readline()
            if line:
                sys.stdout.write(log_text(line.rstrip("\n")) + "\n")
                sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
