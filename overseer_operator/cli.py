"""``overseer-operator``: the operator's command line (``run``)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
from collections.abc import Sequence

from overseer_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overseer-operator",
        description="Kubernetes operator that monitors OpenAperture worker heartbeats "
        "for every MessagingExchange resource.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the operator against the current kubeconfig")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs like 'team-*' work)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=int(os.environ.get("LIVENESS_PORT", 8080)),
        help="serve kopf's liveness probe on /healthz at this port (0: off)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("METRICS_PORT", 9090)),
        help="serve Prometheus metrics on /metrics at this port (0: off)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log more")
    run.add_argument("--debug", action="store_true", help="log everything, kopf's internals too")
    return parser


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from overseer_operator import collector, handlers, kubeconfig, metrics

    del handlers  # importing it registers the handlers with kopf's default registry
    # kopf and the monitors' own client log in the same way (and need no `kubernetes` package).
    kopf.on.login()(kubeconfig.login)

    level = os.environ.get("LOG_LEVEL", "").upper()
    kopf.configure(verbose=args.verbose or level == "DEBUG", debug=args.debug)
    if level in {"WARNING", "ERROR"}:
        logging.getLogger().setLevel(level)
    # One line per Manager or Kubernetes request is noise; failures are logged by the callers.
    for chatty in ("httpx", "httpcore", "aiormq", "aio_pika"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.metrics_port:
        metrics.serve_metrics(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    collector.freeze_startup_heap()
    collector.take_over_full_collections()  # handlers.configure starts the timer
    logging.getLogger(__name__).info(
        "overseer-operator %s watching %s",
        __version__,
        ", ".join(args.namespace) if args.namespace else "all namespaces",
    )
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        identity=kopf_identity(),  # type: ignore[arg-type]  # kopf.Identity: a private NewType(str)
    )
    return 0


def kopf_identity() -> str:
    """The operator's name among kopf peers: ``POD_ID`` (kopf's own variable), else ``POD_NAME``
    (the Deployment's), else user@host. kopf's default asks ``getpass.getuser()``, which raises for
    a uid without a passwd entry, such as the image's 65532."""
    for variable in ("POD_ID", "POD_NAME"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry for this uid
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_operator(args)
