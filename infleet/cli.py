"""The one `infleet` command. Each sub-command is a part's own `__main__`, so it also runs as
`python -m infleet.<part>`; this file only dispatches."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# sub-command -> (module whose main(argv) runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("infleet.cluster.__main__", "the local fleet: up | down | status | env"),
    "logs": ("infleet.cluster.logs", "a locally launched pod's output"),
    "crds": ("infleet.operator.crd", "render the CRDs from the API models (render [--check])"),
    "operator": ("infleet.operator.__main__", "run the operator (run [--namespace NS]; uninstall-check)"),
    "runtime": ("infleet.runtime.__main__", "the inference server (serve --model ...)"),
    "model": (
        "infleet.runtime.fetch.__main__",
        "fetch models into a cache (pull URI [URI ...] [--revision R] --cache DIR)",
    ),
    "gateway": ("infleet.gateway.__main__", "the fleet's HTTP entrypoint (run [--port 8080])"),
    "cascade": ("infleet.gateway.calibrate", "cascades: calibrate a threshold on a labelled sample"),
    "autoscaler": ("infleet.autoscaler.__main__", "the trace-driven fleet simulator (simulate --trace FILE)"),
    "report": (
        "infleet.monitoring.report",
        "plots from Prometheus; chargeback --month YYYY-MM: a CSV",
    ),
}


def usage() -> str:
    lines = ["usage: infleet [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def infleet_version() -> str:
    try:
        return version("infleet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:  # as git and kubectl do: usage on stderr, and a status that tells a script nothing ran
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version", "version"):
        print(f"infleet {infleet_version()}")
        return 0
    if args[0] not in COMMANDS:
        print(f"infleet: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
