"""``raftmq`` command line: ``raftmq serve`` runs a node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from node import config
from node.ops import force_members

if TYPE_CHECKING:
    from node.broker import Broker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftmq", description="RaftMQ: a clustered AMQP 0-9-1 broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run a node",
        description="Run a RaftMQ node. Every option can also be set with the RAFTMQ_<OPTION> "
                    "environment variable (e.g. RAFTMQ_AMQP_PORT); the command line wins.",
    )
    config.add_arguments(serve)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", help="management API of any running node (default: "
                        "$RAFTMQ_ADMIN_URL or http://127.0.0.1:15672)")
    common.add_argument("--user", help="default: $RAFTMQ_ADMIN_USER or guest")
    common.add_argument("--password", help="default: $RAFTMQ_ADMIN_PASSWORD or guest")

    cluster = sub.add_parser("cluster", help="inspect and change cluster membership")
    csub = cluster.add_subparsers(dest="action", required=True)
    p = csub.add_parser("transfer-leadership", parents=[common],
                        help="move Raft leadership (default: to the most up-to-date follower)")
    p.add_argument("--to", help="node id or Raft address of the new leader")
    csub.add_parser("status", parents=[common],
                    help="members, leader, term, commit/applied index and lag")
    for action, verb in (("add", "add"), ("remove", "remove")):
        p = csub.add_parser(action, parents=[common],
                            help=f"{verb} a member by its Raft address (one at a time)")
        p.add_argument("address", help="the member's Raft address, HOST:PORT")
        if action == "add":
            p.add_argument("--force", action="store_true", help="add it even if it does not "
                           "answer as a RaftMQ node with this cluster's secret")

    p = csub.add_parser(
        "force-members", help="recover from a lost majority: on a stopped survivor, rewrite "
        "its data directory's membership to the survivors (a plan only without --yes)")
    force_members.add_arguments(p)

    nd = sub.add_parser("node", help="operate on one node")
    p = nd.add_subparsers(dest="action", required=True).add_parser(
        "drain", parents=[common], help="take the node this --node points at out of service: "
        "no new connections, leadership handed over, clients closed (320) once their "
        "publishes are confirmed; it stays a cluster member until it stops")

    add = sub.add_parser("add", help="add a user or a virtual host")
    asub = add.add_subparsers(dest="what", required=True)
    p = asub.add_parser("user", parents=[common], help="add (or replace) a user")
    p.add_argument("name")
    p.add_argument("new_password", metavar="PASSWORD")
    p.add_argument("--tags", default="", help="comma-separated: administrator, monitoring, "
                   "management, policymaker (default: none)")
    p = asub.add_parser("vhost", parents=[common], help="add a virtual host")
    p.add_argument("name")
    p.add_argument("--description", default="")

    delete = sub.add_parser("delete", help="delete a user, a virtual host or a queue")
    dsub = delete.add_subparsers(dest="what", required=True)
    for what in ("user", "vhost"):
        dsub.add_parser(what, parents=[common]).add_argument("name")
    p = dsub.add_parser("queue", parents=[common])
    p.add_argument("name")
    p.add_argument("--vhost", default="/")
    p.add_argument("--if-unused", action="store_true")
    p.add_argument("--if-empty", action="store_true")

    purge = sub.add_parser("purge", help="purge a queue (its ready messages)")
    p = purge.add_subparsers(dest="what", required=True).add_parser("queue", parents=[common])
    p.add_argument("name")
    p.add_argument("--vhost", default="/")

    close = sub.add_parser("close", help="close a client connection (320 CONNECTION_FORCED)")
    p = close.add_subparsers(dest="what", required=True).add_parser("connection",
                                                                     parents=[common])
    p.add_argument("name", help="as 'raftmq list connections' shows it")
    p.add_argument("--reason", default="Closed via raftmq close connection")

    for verb, helptext in (("export", "write the definitions (users, vhosts, permissions, "
                                      "limits, queues, exchanges, bindings) to FILE, "
                                      "RabbitMQ's format; - for standard output"),
                           ("import", "apply a definitions FILE (RabbitMQ's format, e.g. "
                                      "exported from RabbitMQ); - for standard input")):
        p = sub.add_parser(verb, help=helptext).add_subparsers(dest="what", required=True) \
            .add_parser("definitions", parents=[common])
        p.add_argument("file", metavar="FILE")

    st = sub.add_parser("set", help="set permissions, topic permissions, tags, a password, "
                                    "a limit")
    ssub = st.add_subparsers(dest="what", required=True)
    p = ssub.add_parser("permissions", parents=[common],
                        help="a user's configure / write / read regexes in a vhost")
    p.add_argument("name", metavar="USER")
    p.add_argument("configure")
    p.add_argument("write")
    p.add_argument("read")
    p.add_argument("--vhost", default="/")
    p = ssub.add_parser("topic-permissions", parents=[common],
                        help="a user's write / read regexes on routing keys of a topic exchange")
    p.add_argument("name", metavar="USER")
    p.add_argument("exchange")
    p.add_argument("write")
    p.add_argument("read")
    p.add_argument("--vhost", default="/")
    p = ssub.add_parser("user-tags", parents=[common],
                        help="replace a user's tags (its password stays)")
    p.add_argument("name", metavar="USER")
    p.add_argument("tags", nargs="?", default="", help="comma-separated: administrator, "
                   "monitoring, management, policymaker; none given: no tags")
    p = ssub.add_parser("password", parents=[common], help="change a user's password")
    p.add_argument("name")
    p.add_argument("new_password", metavar="PASSWORD")
    p = ssub.add_parser("limit", parents=[common], help="a vhost limit (max-connections, "
                        "max-queues) or a user limit (max-connections, max-channels); "
                        "-1 removes it")
    p.add_argument("kind", choices=("vhost", "user"))
    p.add_argument("name")
    p.add_argument("limit")
    p.add_argument("value", type=int)

    for kind, helptext in (("policy", "a policy (rabbitmqctl set_policy): queues / "
                                      "exchanges whose name PATTERN matches take DEFINITION"),
                           ("operator-policy", "an operator policy: its limits cap the "
                                               "policies' and the clients' (administrator)")):
        p = ssub.add_parser(kind, parents=[common], help=helptext)
        p.add_argument("name")
        p.add_argument("pattern", help="a regular expression (RE2) searched in names")
        p.add_argument("definition", help='JSON, e.g. \'{"max-length": 1000}\'')
        p.add_argument("--vhost", default="/")
        p.add_argument("--priority", type=int, default=0)
        p.add_argument("--apply-to", choices=("queues", "exchanges", "all"), default="all")

    for name, what in (("vm-memory-high-watermark", "memory alarm threshold: a fraction "
                        "such as 0.4 or a size such as 2GiB"),
                       ("disk-free-limit", "disk alarm threshold: a size such as 1GB, or "
                        "mem_relative:F")):
        p = ssub.add_parser(name, parents=[common],
                            help=f"this node's {what} (until it restarts)")
        p.add_argument("value")

    clear = sub.add_parser("clear", help="clear a user's permissions in a vhost, a policy")
    csub2 = clear.add_subparsers(dest="what", required=True)
    p = csub2.add_parser("permissions", parents=[common])
    p.add_argument("name", metavar="USER")
    p.add_argument("--vhost", default="/")
    for kind in ("policy", "operator-policy"):
        p = csub2.add_parser(kind, parents=[common])
        p.add_argument("name")
        p.add_argument("--vhost", default="/")

    _shovel_parser(sub, common)
    lst = sub.add_parser("list", parents=[common], help="list objects of the cluster")
    lst.add_argument("what", choices=("queues", "exchanges", "bindings", "connections",
                                      "channels", "consumers", "nodes", "policies",
                                      "operator-policies", "users",
                                      "vhosts", "permissions", "topic-permissions"))
    lst.add_argument("--vhost", help="only this vhost's (queues, exchanges, bindings, ...)")
    lst.add_argument("--format", choices=("table", "json"), default="table")
    return parser


def _shovel_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   common: argparse.ArgumentParser) -> None:
    """``raftmq shovel list / declare / delete / restart``: dynamic shovels, RabbitMQ's
    ``shovel`` parameters (docs/migration in README.md: "Migrating from RabbitMQ")."""
    sh = sub.add_parser("shovel", help="dynamic shovels: move messages from a queue of any "
                        "AMQP 0-9-1 broker (RabbitMQ) into this cluster")
    shsub = sh.add_subparsers(dest="action", required=True)
    p = shsub.add_parser("list", parents=[common], help="the shovels and their status")
    p.add_argument("--vhost")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = shsub.add_parser("declare", parents=[common], help="create or replace a shovel")
    p.add_argument("name")
    p.add_argument("--vhost", default="/")
    p.add_argument("--src-uri", required=True, help="amqp://user:pass@host:port/vhost")
    p.add_argument("--src-queue", required=True)
    p.add_argument("--dest-uri", default="amqp://",
                   help='default "amqp://": this cluster, as the node\'s default user')
    p.add_argument("--dest-queue")
    p.add_argument("--dest-exchange")
    p.add_argument("--dest-exchange-key")
    p.add_argument("--prefetch-count", type=int, help="src-prefetch-count (default 1000)")
    p.add_argument("--ack-mode", choices=("on-confirm", "on-publish", "no-ack"))
    p.add_argument("--reconnect-delay", type=float, help="seconds (default 1)")
    p.add_argument("--delete-after", help='"never", "queue-length" or a number of messages')
    for action in ("delete", "restart"):
        p = shsub.add_parser(action, parents=[common], help=f"{action} a shovel")
        p.add_argument("name")
        p.add_argument("--vhost", default="/")


def main(argv: list[str] | None = None) -> int:
    """The ``raftmq`` command. A reader that goes away (``raftmq cluster status | head
    -2``) ends it quietly with 141, as SIGPIPE ends other Unix tools, not a traceback
    (SIGPIPE itself stays ignored: a node must not die of a client's closed socket)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit where a broken pipe cannot be caught
        return code
    except BrokenPipeError:
        # what is still buffered for stdout goes nowhere, so the exit cannot fail on it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            cfg = config.load(args)
        except config.ConfigError as e:
            print(f"raftmq: {e}", file=sys.stderr)
            return 2
        return serve(cfg)
    if args.command == "cluster" and args.action == "force-members":
        from node.ops import force_members

        return force_members.run(args)
    from node.ops import admin

    api = admin.Api.from_args(args.node, args.user, args.password)
    if args.command == "shovel":
        return admin.shovel(api, args.action, args.vhost, vars(args))
    if args.command == "node":
        return admin.drain(api)
    if args.command == "cluster":
        if args.action == "status":
            return admin.cluster_status(api)
        if args.action == "transfer-leadership":
            return admin.transfer_leadership(api, args.to)
        return admin.cluster_change(api, "POST" if args.action == "add" else "DELETE",
                                    args.address, getattr(args, "force", False))
    if args.command == "add":
        if args.what == "user":
            return admin.add_user(api, args.name, args.new_password, args.tags)
        return admin.add_vhost(api, args.name, args.description)
    if args.command == "delete" and args.what == "queue":
        return admin.delete_queue(api, args.vhost, args.name, args.if_unused, args.if_empty)
    if args.command == "purge":
        return admin.purge_queue(api, args.vhost, args.name)
    if args.command == "close":
        return admin.close_connection(api, args.name, args.reason)
    if args.command == "export":
        return admin.export_definitions(api, args.file)
    if args.command == "import":
        return admin.import_definitions(api, args.file)
    if args.command == "delete":
        return admin.delete(api, args.what, args.name)
    if args.command == "set":
        if args.what == "permissions":
            return admin.set_permissions(api, args.name, args.vhost, args.configure,
                                         args.write, args.read)
        if args.what == "topic-permissions":
            return admin.set_topic_permissions(api, args.name, args.vhost, args.exchange,
                                               args.write, args.read)
        if args.what == "user-tags":
            return admin.set_user_tags(api, args.name, args.tags)
        if args.what == "password":
            return admin.change_password(api, args.name, args.new_password)
        if args.what in ("policy", "operator-policy"):
            return admin.set_policy(api, args.what, args.vhost, args.name, args.pattern,
                                    args.definition, args.priority, args.apply_to)
        if args.what in ("vm-memory-high-watermark", "disk-free-limit"):
            return admin.set_node_limit(api, args.what, args.value)
        return admin.set_limit(api, args.kind, args.name, args.limit, args.value)
    if args.command == "clear":
        if args.what in ("policy", "operator-policy"):
            return admin.clear_policy(api, args.what, args.vhost, args.name)
        return admin.clear_permissions(api, args.name, args.vhost)
    if args.command == "list":
        return admin.list_items(api, args.what, args.format, args.vhost)
    return 2


def serve(cfg: config.Config) -> int:
    from node.services.alarms import fix_mmap_threshold

    fix_mmap_threshold()
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
    from cluster.raft.recovery import RecoveryError

    try:
        asyncio.run(_run(cfg))
    except (OSError, RecoveryError) as e:
        logging.getLogger("raftmq").error("cannot start: %s", e)
        return 1
    return 0


async def _start(broker: Broker) -> None:
    await broker.start()
    await broker.serve()


async def _run(cfg: config.Config) -> None:
    from node.broker import Broker
    from node.services import web

    log = logging.getLogger("raftmq")
    log.info("starting: %s", config.describe(cfg))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(cfg, loop)
    runners = []
    try:
        runners = await web.serve(broker)
        # SIGTERM must work while the node waits for a leader (a lost quorum, peers
        # not started yet): start-up is a task that the signal cancels.
        starting = asyncio.ensure_future(_start(broker))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            log.info("shutting down before start-up finished")
        else:
            starting.result()  # start-up failed: raise it
            await stopping
            log.info("shutting down")
    finally:
        for runner in runners:
            await runner.cleanup()
        await broker.stop()
