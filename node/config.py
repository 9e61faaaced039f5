"""Node configuration: one table of options, read from the command line or
``RAFTMQ_<NAME>`` environment variables, validated before anything starts.

A bad value stops start-up with a message naming the option (``ConfigError``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from node.services import alarms, discovery


class ConfigError(Exception):
    """A configuration value is invalid; the message names the option."""


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("must be 0..65535")
    return port


def _host(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT")
    if _port(port) == 0:
        raise ValueError("port must not be 0")
    return value


def _addresses(value: str) -> tuple[str, ...]:
    return tuple(_address(v.strip()) for v in value.split(",") if v.strip())


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def _frame_max(value: str) -> int:
    n = int(value)
    if n != 0 and n < 4096:
        raise ValueError("must be 0 (no limit) or >= 4096")
    return n


def _channel_max(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 65535:
        raise ValueError("must be 0..65535")
    return n


def _log_level(value: str) -> str:
    v = value.upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of debug, info, warning, error")
    return v


def _node_id(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty word")
    return value


def _readable_file(value: str) -> str:
    if value and not os.access(value, os.R_OK):
        raise ValueError("no readable file there")
    return value


def _tls_verify(value: str) -> str:
    v = value.strip().lower()
    if v not in ("none", "optional", "required"):
        raise ValueError("must be none, optional or required")
    return v


def _seconds(value: str) -> float:
    v = float(value)
    if v <= 0:
        raise ValueError("must be > 0")
    return v


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("node_id", _node_id, "n1", "this node's id, unique in the cluster"),
    Option("amqp_host", _host, "127.0.0.1", "address the AMQP listener binds"),
    Option("amqp_port", _port, "5672", "AMQP port"),
    Option("metrics_host", _host, "127.0.0.1", "address of the HTTP /metrics listener"),
    Option("metrics_port", _port, "15692",
           "HTTP port for /metrics, /healthz and /livez, unauthenticated (0 disables)"),
    Option("management_host", _host, "127.0.0.1", "address of the management API listener"),
    Option("management_port", _port, "15672",
           "HTTP port of the management API (/api, authenticated; 0 disables)"),
    Option(
        "raft_address",
        _address,
        None,
        "HOST:PORT of this node's Raft listener (default: AMQP host, AMQP port + 20000)",
    ),
    Option("peers", _addresses, "", "comma-separated Raft addresses of the other members"),
    Option("cluster_secret", str, "", "shared secret encrypting Raft traffic (required with peers)"),
    Option("data_dir", str, "./data", "directory for the Raft journal and snapshots"),
    Option("default_user", str, "guest", "user created at start-up"),
    Option("default_pass", str, "guest", "password of the default user"),
    Option(
        "loopback_users",
        lambda v: tuple(u for u in v.split(",") if u),
        "guest",
        "users that may only connect from loopback (comma-separated; empty for none)",
    ),
    Option("frame_max", _frame_max, "131072", "largest frame offered to clients"),
    Option("channel_max", _channel_max, "2047", "most channels per connection offered"),
    Option("max_connections", _positive_int, "0",
           "most client connections this node accepts (0: no limit, RabbitMQ's default)"),
    Option("max_consumers_per_channel", _positive_int, "1000",
           "most consumers on one channel, beyond them basic.consume closes the connection "
           "(530) as RabbitMQ's consumer_max_per_channel does (0: no limit, RabbitMQ's "
           "default; 1,000 is Amazon MQ's)"),
    Option("heartbeat", _positive_int, "60", "heartbeat interval offered to clients, s (0 off)"),
    Option("consumer_timeout", _positive_int, "1800000",
           "a channel whose oldest unacknowledged delivery is older than this is closed with "
           "406 and its messages requeued, ms, as RabbitMQ's consumer_timeout (0: never; a "
           "queue's x-consumer-timeout argument overrides it)"),
    Option("tls_port", _port, "5671", "AMQPS port (used when --tls-cert and --tls-key are given)"),
    Option("tls_host", str, "", "address the AMQPS listener binds (default: --amqp-host)"),
    Option("tls_cert", _readable_file, "", "PEM certificate (chain) of the AMQPS listener"),
    Option("tls_key", _readable_file, "", "PEM private key of --tls-cert"),
    Option("tls_ca", _readable_file, "",
           "PEM CA bundle that client certificates are verified against"),
    Option("tls_verify", _tls_verify, "none",
           "client certificates: none (not asked for), optional (verified if presented; "
           "RabbitMQ's verify_peer) or required (verify_peer + fail_if_no_peer_cert); "
           "a verified certificate allows the EXTERNAL login as its common name"),
    Option("tls_ciphers", str, "", "OpenSSL cipher list for TLS 1.2 (default: Python's)"),
    # The management API over HTTPS: RabbitMQ's management.ssl.* (port, certfile, keyfile,
    # cacertfile, verify + fail_if_no_peer_cert), beside the plain port or instead of it.
    Option("management_tls_port", _port, "15671",
           "HTTPS port of the management API (used when --management-tls-cert and "
           "--management-tls-key are given)"),
    Option("management_tls_cert", _readable_file, "",
           "PEM certificate (chain) of the management API's HTTPS listener"),
    Option("management_tls_key", _readable_file, "", "PEM private key of --management-tls-cert"),
    Option("management_tls_ca", _readable_file, "",
           "PEM CA bundle that the management API's client certificates are verified against"),
    Option("management_tls_verify", _tls_verify, "none",
           "the management API's client certificates: none, optional or required (as "
           "--tls-verify; a certificate does not log in: requests still need basic auth)"),
    Option("handshake_timeout", _seconds, "10",
           "a client must complete the AMQP handshake within this long, and may not stall "
           "inside a frame for longer (with heartbeats: nor for two heartbeat intervals), s"),
    Option("http_request_timeout", _seconds, "30",
           "HTTP ports: a request's headers and body must arrive within this, s"),
    Option("http_keepalive_timeout", _seconds, "75",
           "HTTP ports: an idle keep-alive connection is closed after this, s"),
    Option("http_max_connections", _positive_int, "1000",
           "HTTP ports: most connections open at once on each, one more is closed "
           "(0: no limit)"),
    Option("flow_high_water", _positive_int, "300",
           "pause publishers while a queue with consumers holds this many ready messages"),
    Option("vm_memory_high_watermark", alarms.parse_memory_watermark,
           alarms.DEFAULT_MEMORY_WATERMARK,
           "memory alarm above this resident size: a fraction of the memory the node may use "
           "(the cgroup limit, else RAM), or a size such as 2GiB; while any node is in alarm, "
           "publishers are blocked cluster-wide"),
    Option("disk_free_limit", alarms.parse_disk_limit, alarms.DEFAULT_DISK_FREE_LIMIT,
           "disk alarm below this much free space in --data-dir: a size such as 1GB, or "
           "mem_relative:F (F x the memory total)"),
    Option("snapshot_entries", _positive_int, "100000",
           "compact the Raft log after this many entries"),
    Option("snapshot_mib", _positive_int, "32",
           "compact the Raft log after this many MiB of entries; the log since the last "
           "snapshot is held in memory, so this bounds it (docs/storage.md)"),
    Option("fsync", lambda v: _bool(v), "true", "fsync the journal before confirming (true/false)"),
    Option("election_timeout", _seconds, "0.5", "Raft election timeout, s (min; max is 2.5x)"),
    Option("node_down_after", _seconds, "5",
           "the leader records a member down after this long unreachable, s"),
    Option("isolation_timeout", _seconds, "3",
           "cut off from the majority this long, a node closes its clients (320), s"),
    Option("log_level", _log_level, "info", "debug, info, warning or error"),
    # Deployment: peer discovery and name resolution (node/services/discovery.py).
    Option("peer_discovery", discovery.parse_mode, "none",
           "none (use --node-id/--raft-address/--peers) or statefulset (derive them from the "
           "pod's hostname <statefulset>-<ordinal>)"),
    Option("statefulset_name", discovery.parse_label, "",
           "statefulset discovery: the StatefulSet's name (default: the hostname's prefix)"),
    Option("headless_service", discovery.parse_label, "",
           "statefulset discovery: the headless Service giving pods their DNS names"),
    Option("namespace", discovery.parse_label, "",
           "statefulset discovery: the namespace; with it, peer names are fully qualified"),
    Option("cluster_domain", discovery.parse_domain, "cluster.local",
           "statefulset discovery: the cluster's DNS domain"),
    Option("replicas", _positive_int, "0",
           "statefulset discovery: the number of pods of a new cluster (seeds the peers)"),
    Option("raft_port", _port, "25672", "statefulset discovery: the Raft port of every pod"),
    Option("raft_bind", discovery.parse_bind, "",
           "address (or HOST:PORT) the Raft listener binds when --raft-address is a name "
           "others dial (statefulset discovery: default $POD_IP)"),
    Option("static_hosts", discovery.parse_static_hosts, "",
           "name=ip,... resolved inside this process before DNS (tests, hosts without DNS)"),
    Option("raft_dns_cache", _seconds, "5",
           "how long a peer's resolved address (or failed lookup) is reused, s"),
)


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class Config:
    node_id: str = "n1"
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 15692
    management_host: str = "127.0.0.1"
    management_port: int = 15672
    raft_address: str = ""
    peers: tuple[str, ...] = ()
    cluster_secret: str = ""
    data_dir: str = "./data"
    default_user: str = "guest"
    default_pass: str = "guest"
    loopback_users: tuple[str, ...] = ("guest",)
    frame_max: int = 131072
    channel_max: int = 2047
    max_connections: int = 0
    max_consumers_per_channel: int = 1000
    heartbeat: int = 60
    consumer_timeout: int = 1800000  # ms; 0: none
    tls_port: int = 5671
    tls_host: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: str = "none"
    tls_ciphers: str = ""
    management_tls_port: int = 15671
    management_tls_cert: str = ""
    management_tls_key: str = ""
    management_tls_ca: str = ""
    management_tls_verify: str = "none"
    handshake_timeout: float = 10.0
    http_request_timeout: float = 30.0
    http_keepalive_timeout: float = 75.0
    http_max_connections: int = 1000
    flow_high_water: int = 300
    vm_memory_high_watermark: alarms.Limit = alarms.Limit(0.4, relative=True)
    disk_free_limit: alarms.Limit = alarms.Limit(50_000_000, relative=False)
    snapshot_entries: int = 100000
    snapshot_mib: int = 32
    fsync: bool = True
    election_timeout: float = 0.5
    node_down_after: float = 5.0
    isolation_timeout: float = 3.0
    log_level: str = "INFO"
    peer_discovery: str = "none"
    statefulset_name: str = ""
    headless_service: str = ""
    namespace: str = ""
    cluster_domain: str = "cluster.local"
    replicas: int = 0
    raft_port: int = 25672
    raft_bind: str = ""
    static_hosts: tuple[tuple[str, str], ...] = ()
    raft_dns_cache: float = 5.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def env_name(option: str) -> str:
    return "RAFTMQ_" + option.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        default = f" (default: {opt.default})" if opt.default not in (None, "") else ""
        parser.add_argument(
            flag, dest=opt.name, default=None, metavar=opt.name.upper(),
            help=f"{opt.help}{default}; env {env_name(opt.name)}",
        )


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every option: command line, then environment, then default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    given: set[str] = set()  # options set by flag or variable, not by default
    for opt in OPTIONS:
        raw = getattr(args, opt.name, None) if args is not None else None
        source = "--" + opt.name.replace("_", "-")
        if raw is None and env_name(opt.name) in environ:
            raw, source = environ[env_name(opt.name)], env_name(opt.name)
        if raw is not None:
            given.add(opt.name)
        if raw is None:
            raw = opt.default
        if raw is None:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid value {raw!r} for {source}: {e}") from None
    cfg = Config(**values)
    if not cfg.raft_address:
        cfg = _replace(cfg, raft_address=f"{cfg.amqp_host}:{(cfg.amqp_port + 20000) % 65536 or 25672}")
    try:
        options = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        cfg = _replace(cfg, **discovery.configure(options, environ, given))
    except discovery.DiscoveryError as e:
        raise ConfigError(str(e)) from None
    _check(cfg)
    return cfg


def _replace(cfg: Config, **changes: Any) -> Config:
    data = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    data.update(changes)
    return Config(**data)


def tls_context(cfg: Config, prefix: str = "tls") -> ssl.SSLContext | None:
    """The AMQPS listener's context (None without --tls-cert): TLS 1.2 at least, the
    certificate and key, client certificates as --tls-verify says. ``prefix``
    "management_tls": the management API's HTTPS listener's, from its own options (and
    the AMQPS cipher list)."""
    cert, key, ca, verify = (getattr(cfg, f"{prefix}_{name}")
                             for name in ("cert", "key", "ca", "verify"))
    flag = "--" + prefix.replace("_", "-")
    if not cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{flag}-cert {cert} / {flag}-key {key}: {e}") from None
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{flag}-ca {ca}: {e}") from None
    ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                       "required": ssl.CERT_REQUIRED}[verify]
    if cfg.tls_ciphers:
        try:
            ctx.set_ciphers(cfg.tls_ciphers)
        except ssl.SSLError as e:
            raise ConfigError(f"invalid value {cfg.tls_ciphers!r} for --tls-ciphers: {e}") from None
    return ctx


def _check(cfg: Config) -> None:
    """Cross-option checks."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if cfg.tls_verify != "none" and not cfg.tls_ca:
        raise ConfigError(f"--tls-verify {cfg.tls_verify} needs --tls-ca (the CA that client "
                          "certificates are verified against)")
    if not cfg.amqp_port and not cfg.tls_cert:
        raise ConfigError("--amqp-port 0 turns the plain listener off: give --tls-cert and "
                          "--tls-key for an AMQPS one, or no client can connect")
    tls_context(cfg)  # a certificate that does not load stops start-up here
    if bool(cfg.management_tls_cert) != bool(cfg.management_tls_key):
        raise ConfigError("--management-tls-cert and --management-tls-key go together: give "
                          "both or neither")
    if cfg.management_tls_verify != "none" and not cfg.management_tls_ca:
        raise ConfigError(f"--management-tls-verify {cfg.management_tls_verify} needs "
                          "--management-tls-ca")
    if cfg.management_tls_cert and cfg.management_tls_port and \
            cfg.management_tls_port == cfg.management_port:
        raise ConfigError(f"--management-tls-port {cfg.management_tls_port} is the plain "
                          "--management-port too")
    tls_context(cfg, "management_tls")
    if cfg.peers and not cfg.cluster_secret:
        raise ConfigError(
            "--peers given without --cluster-secret (RAFTMQ_CLUSTER_SECRET): a multi-node "
            "cluster needs a secret, otherwise its Raft port accepts anyone's pickles"
        )
    if cfg.raft_address in cfg.peers:
        raise ConfigError(f"--peers must not contain this node's own --raft-address {cfg.raft_address}")
    raft_host = cfg.raft_address.rpartition(":")[0]
    try:
        ip = ipaddress.ip_address(raft_host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        raise ConfigError(
            f"--raft-address {cfg.raft_address}: bind the Raft port to a specific address, not {raft_host}"
        )
    if cfg.raft_bind and discovery._is_unspecified(discovery.split_host_port(cfg.raft_bind)[0]):
        raise ConfigError(f"--raft-bind {cfg.raft_bind}: bind the Raft port to a specific address")


def describe(cfg: Config, secrets: Sequence[str] = ("cluster_secret", "default_pass")) -> str:
    parts = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        parts.append(f"{f.name}={'***' if f.name in secrets and v else v}")
    return " ".join(parts)
