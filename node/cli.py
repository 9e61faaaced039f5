"""``raftmq`` command line: ``raftmq serve`` runs a node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from node import config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftmq", description="RaftMQ: a clustered AMQP 0-9-1 broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run a node",
        description="Run a RaftMQ node. Every option can also be set with the RAFTMQ_<OPTION> "
                    "environment variable (e.g. RAFTMQ_AMQP_PORT); the command line wins.",
    )
    config.add_arguments(serve)

    cluster = sub.add_parser("cluster", help="inspect and change cluster membership")
    csub = cluster.add_subparsers(dest="action", required=True)
    node_help = ("HTTP address of any running node (default: $RAFTMQ_ADMIN_URL or "
                 "http://127.0.0.1:15692)")
    st = csub.add_parser("status", help="members, leader, term, commit/applied index and lag")
    st.add_argument("--node", help=node_help)
    for action, verb in (("add", "add"), ("remove", "remove")):
        p = csub.add_parser(action, help=f"{verb} a member by its Raft address (one at a time)")
        p.add_argument("address", help="the member's Raft address, HOST:PORT")
        p.add_argument("--node", help=node_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            cfg = config.load(args)
        except config.ConfigError as e:
            print(f"raftmq: {e}", file=sys.stderr)
            return 2
        return serve(cfg)
    if args.command == "cluster":
        from node import admin

        url = admin.admin_url(args.node)
        if args.action == "status":
            return admin.status(url)
        return admin.change(url, "POST" if args.action == "add" else "DELETE", args.address)
    return 2


def serve(cfg: config.Config) -> int:
    logging.basicConfig(
        level=getattr(logging, cfg.log_level),
        format=f"%(asctime)s {cfg.node_id} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        pass
    try:
        asyncio.run(_run(cfg))
    except OSError as e:
        logging.getLogger("raftmq").error("cannot start: %s", e)
        return 1
    return 0


async def _run(cfg: config.Config) -> None:
    from node.broker import Broker
    from node.http import serve_http

    log = logging.getLogger("raftmq")
    log.info("starting: %s", config.describe(cfg))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(cfg, loop)
    http = None
    try:
        if cfg.metrics_port:
            http = await serve_http(broker, cfg.metrics_host, cfg.metrics_port)
        await broker.start()
        await broker.serve()
        await stop.wait()
        log.info("shutting down")
    finally:
        if http is not None:
            http.close()
        await broker.stop()
