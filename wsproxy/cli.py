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
    return parser


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
        try:
            load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.config}: configuration is valid")
        return EXIT_OK
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "demo":
        from wsproxy.demo import run_demo

        _setup_logging()
        return _run_server(run_demo(args.host, args.port))
    raise AssertionError(f"unhandled command {args.command!r}")


def _serve(path: str) -> int:
    from wsproxy.workers import MULTIPROC_ENV, supervise, worker_count, worker_from_env

    worker = worker_from_env()
    if worker is not None:
        # Until its handlers are in place (wsproxy.server): a SIGHUP from the
        # supervisor or a Ctrl-C to the whole group must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if worker is None:
            config, data = read_config(path)
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
