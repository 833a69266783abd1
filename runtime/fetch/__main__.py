"""`infleet model pull URI [--revision R] --cache DIR`: prints the model's local path, or `REASON: message` (also to
the Kubernetes termination-message file) and exits with the reason's code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infleet.runtime.fetch import FetchError, pull

TERMINATION_LOG = Path("/dev/termination-log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet model")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="download a model into the cache and print its local path")
    p.add_argument("uri")
    p.add_argument("--revision", default=None)
    p.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        path = pull(args.uri, args.cache, args.revision)
    except ModuleNotFoundError as err:  # boto3 / gcsfs are the `stores` extra (the runtime image has them)
        print(
            f"infleet model: {args.uri.split(':')[0]}:// needs {err.name}: pip install 'infleet[stores]'",
            file=sys.stderr,
        )
        return 2
    except FetchError as err:
        line = f"{err.reason.name}: {err.message}"
        print(line, file=sys.stderr)
        try:
            TERMINATION_LOG.write_text(line + "\n")
        except OSError:
            pass
        return err.reason.value
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
