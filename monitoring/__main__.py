"""`python -m infleet.monitoring render [--check]`: the chart's dashboards and rule files from the code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infleet.monitoring import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet monitoring", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="write charts/infleet/dashboards/*.json and charts/infleet/rules/*.yaml")
    cmd.add_argument("--check", action="store_true", help="write nothing; fail if the files on disk differ")
    cmd.add_argument("--root", type=Path, default=render.REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if args.check:
        stale = render.drift(args.root)
        for path in stale:
            print(f"out of date: {path} (run `python -m infleet.monitoring render`)", file=sys.stderr)
        return 1 if stale else 0
    for path in render.write(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
