"""Command line: the only place that prints user errors and picks exit codes.

Exit status: 0 success, 1 runtime failure (a port in use, say), 2 usage or
configuration error (nothing started).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from wsproxy.config import ConfigError, load_config, read_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (faster tunnel), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsproxy", description="A WebSocket-aware reverse proxy that speaks HTTP/1.1 upstream."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the proxy with a YAML configuration")
    serve.add_argument("-c", "--config", required=True, metavar="FILE")
    check = commands.add_parser(
        "check", help="validate a configuration; exit 0, or 2 with every error"
    )
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    demo = commands.add_parser("demo", help="run the proxy in front of a built-in echo backend")
    demo.add_argument("--host", default="127.0.0.1", help="front listener host (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="front listener port (default 8080)")
    _probe_arguments(
        commands.add_parser(
            "probe",
            help="try the WebSocket handshakes clients and proxies send against a URL, "
            "and say which ones the server keeps",
            description="Opens one WebSocket handshake per form real clients and proxies "
            "send (HTTP/1.1 and 1.0, Connection: Upgrade and keep-alive, Upgrade, with and "
            "without permessage-deflate), holds each session a short window with a ping "
            "and a message, and prints what happened and why. Exit 0 when the standard "
            "handshake holds, 1 when it does not, 2 on a usage error.",
        )
    )
    return parser


def _duration(text: str) -> float:
    from wsproxy.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _probe_arguments(probe: argparse.ArgumentParser) -> None:
    probe.add_argument("url", help="ws://, wss://, http:// or https:// (the same host)")
    probe.add_argument(
        "--hold", type=_duration, default=2.0, help="how long to hold each session (default 2s)"
    )
    probe.add_argument(
        "--timeout",
        type=_duration,
        default=5.0,
        help="for the connection and for the response head (default 5s)",
    )
    probe.add_argument("--origin", help="an Origin header to send")
    probe.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra request header (repeatable)",
    )
    probe.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="a subprotocol to offer (repeatable)",
    )
    probe.add_argument(
        "--insecure", action="store_true", help="wss://: do not verify the certificate"
    )
    probe.add_argument("--json", action="store_true", help="print the results as JSON")


def _setup_logging(worker: int | None = None) -> None:
    where = "" if worker is None else f"[worker {worker}]"
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        from wsproxy.tls import load as load_tls

        try:
            load_tls(load_config(args.config))  # the certificates it names must load too
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.config}: configuration is valid")
        return EXIT_OK
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "probe":
        return _probe(args)
    if args.command == "demo":
        from wsproxy.demo import run_demo

        _setup_logging()
        return _run_server(run_demo(args.host, args.port))
    raise AssertionError(f"unhandled command {args.command!r}")


def _probe(args: argparse.Namespace) -> int:
    import json

    from wsproxy.probe.client import ProbeError, probe
    from wsproxy.probe.model import (
        Options,
        Target,
        UsageError,
        check_subprotocol,
        check_value,
        diagnose,
        parse_header,
    )
    from wsproxy.probe.report import as_json, table

    try:
        target = Target.parse(args.url)
        options = Options(
            hold=args.hold,
            timeout=args.timeout,
            origin=None if args.origin is None else check_value("--origin", args.origin),
            headers=tuple(parse_header(text) for text in args.header),
            subprotocols=tuple(check_subprotocol(name) for name in args.subprotocol),
            insecure=args.insecure,
        )
        if options.timeout <= 0:
            raise UsageError("--timeout must be more than 0")
        if options.hold <= 0:
            raise UsageError("--hold must be more than 0 (the probe holds each session)")
    except UsageError as exc:
        print(f"wsproxy probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcomes = asyncio.run(probe(target, options))
    except ProbeError as exc:
        print(f"wsproxy probe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("wsproxy probe: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    fatal = {outcome.error for outcome in outcomes if outcome.fatal}
    if len(fatal) == 1 and all(outcome.fatal for outcome in outcomes):
        # The same failure for every variant (refused, DNS, TLS): one line.
        print(f"wsproxy probe: {fatal.pop()}", file=sys.stderr)
        return EXIT_FAILURE
    diagnosis = diagnose(outcomes, options.hold)
    if args.json:
        print(json.dumps(as_json(target, options.hold, outcomes, diagnosis), indent=2))
    else:
        print(table(target, options.hold, outcomes, diagnosis), end="")
    return EXIT_OK if diagnosis.ok else EXIT_FAILURE


def _serve(path: str) -> int:
    from wsproxy.workers import MULTIPROC_ENV, supervise, worker_count, worker_from_env

    worker = worker_from_env()
    if worker is not None:
        # Until its handlers are in place (wsproxy.server): a SIGHUP from the
        # supervisor or a Ctrl-C to the whole group must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    from wsproxy.tls import load as load_tls

    try:
        if worker is None:
            config, data = read_config(path)
            load_tls(config)  # a certificate that does not load: nothing starts
        else:
            # The supervisor's copy of the configuration in force, named
            # as the operator's file.
            config = load_config(path, name=worker[0].config_name)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    from wsproxy.memory import tune_malloc

    tune_malloc()
    if worker is not None:
        from wsproxy.server import serve

        role, channel = worker
        _setup_logging(role.index)
        return _run_server(serve(config, path, role, channel))
    count = worker_count(config.workers)
    _setup_logging()
    if count > 1:
        # Nothing here has imported prometheus-client yet: supervise()
        # chooses its multiprocess directory first.
        return _run_server(supervise(config, path, data, count))
    # One process keeps its metrics in memory: a PROMETHEUS_MULTIPROC_DIR
    # left in the environment (for workers) must not send them to files.
    os.environ.pop(MULTIPROC_ENV, None)
    from wsproxy.server import serve

    return _run_server(serve(config, path))


def _run_server(main: Coroutine[Any, Any, None]) -> int:
    try:
        run(main)
    except OSError as exc:
        # Binding a listener is where a user's mistake surfaces at run time.
        print(f"wsproxy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return EXIT_OK
