"""`infleet model pull URI [URI ...] [--revision R] --cache DIR`: prints each model's local path, or `REASON: message`
(also to the Kubernetes termination-message file) and exits with the reason's code. The revision is the first URI's
(a pod's model); the others (a speculative draft model) are fetched at their default."""

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
    p.add_argument("uris", nargs="+", metavar="uri")
    p.add_argument("--revision", default=None, help="of the first URI")
    p.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    for i, uri in enumerate(args.uris):
        code = pull_one(uri, args.cache, args.revision if i == 0 else None)
        if code:
            return code
    return 0


def pull_one(uri: str, cache: Path, revision: str | None) -> int:
    try:
        path = pull(uri, cache, revision)
    except ModuleNotFoundError as err:  # boto3 / gcsfs are the `stores` extra (the runtime image has them)
        print(f"infleet model: {uri.split(':')[0]}:// needs {err.name}: pip install 'infleet[stores]'", file=sys.stderr)
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
