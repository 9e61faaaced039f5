"""Peer discovery: where a node's Raft identity and its peers come from.

``RAFTMQ_PEER_DISCOVERY`` (``--peer-discovery``) picks the mode:

* ``none`` (default): ``--node-id``, ``--raft-address`` and ``--peers`` are
  taken as given (``docker-compose.yml`` writes them out with service names).
  One exception: a single node (no peers, no ``--raft-address``) whose AMQP
  host is ``0.0.0.0`` (the container image's default) gets its Raft address on
  127.0.0.1, since nobody dials it.
* ``statefulset``: a Kubernetes StatefulSet pod works everything out from its
  hostname ``<statefulset>-<ordinal>`` (``raftmq-2`` → ordinal 2):

  - node id = the hostname;
  - Raft address = ``<hostname>.<headless service>[.<namespace>.svc.<cluster
    domain>]:<raft port>``, the pod's stable DNS name, which is also its member
    id in pysyncobj (members are identified by their address *string*;
    pysyncobj resolves the name itself each time it dials, see below);
  - peers = the same names for the other ordinals ``0 .. replicas-1``. An
    ordinal at or past ``--replicas`` is a pod added by scaling up: its peers
    are all of ``0 .. replicas-1``, and it joins once ``raftmq cluster add``
    makes it a member. ``--replicas`` only seeds a new cluster; after that the
    membership lives in the Raft log;
  - the Raft listener binds the pod's own IP (``--raft-bind``, else the
    ``POD_IP`` variable, else the address the hostname resolves to) — never
    ``0.0.0.0``.

``RAFTMQ_STATIC_HOSTS`` (``--static-hosts name=ip,…``) maps host names to
addresses inside this process (``socket.getaddrinfo``, which pysyncobj's
resolver calls), for tests on loopback and for places without DNS. Listener
hosts (``--amqp-host``, ``--metrics-host``, ``--raft-bind``) found in the map are
replaced by their address, since uvloop resolves through libuv, not Python.

How pysyncobj resolves peers: each member is a ``TCPNode`` keyed by its
address string; its ``.ip`` goes through a process-wide caching resolver
(``socket.getaddrinfo``, preferring IPv4) every time pysyncobj dials, and an
incoming connection names itself by sending its address string. So DNS names
work as member ids; ``--raft-dns-cache`` bounds how long an answer (or a
failed lookup) is kept, since a rescheduled pod comes back with a new IP.

Everything here but :func:`install_static_hosts` is a pure function of its
arguments; errors are :class:`DiscoveryError` naming the option, which
``node.config`` turns into a ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MODES = ("none", "statefulset")
DEFAULT_RAFT_PORT = 25672

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POD_NAME = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")

Resolver = Callable[[str], "str | None"]


class DiscoveryError(ValueError):
    """Bad discovery settings; the message names the option."""


def flag(option: str) -> str:
    """``headless_service`` → ``--headless-service (RAFTMQ_HEADLESS_SERVICE)``."""
    return f"--{option.replace('_', '-')} (RAFTMQ_{option.upper()})"


# --- parsing (used as option parsers by node.config) ---------------------------------


def parse_mode(value: str) -> str:
    v = value.strip().lower() or "none"
    if v not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}")
    return v


def parse_label(value: str) -> str:
    """A DNS label (RFC 1123), or empty for "not set"."""
    v = value.strip()
    if v and (len(v) > 63 or not _LABEL.match(v)):
        raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 63")
    return v


def parse_domain(value: str) -> str:
    v = value.strip().strip(".")
    if not v or any(not parse_label(part) for part in v.split(".")):
        raise ValueError("must be a DNS domain such as cluster.local")
    return v


def parse_static_hosts(value: str) -> tuple[tuple[str, str], ...]:
    """``name=ip,name2=ip2`` → ``(("name", "ip"), …)``; names are matched case-insensitively."""
    pairs: list[tuple[str, str]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, ip = item.partition("=")
        name, ip = name.strip().lower().rstrip("."), ip.strip()
        if not sep or not name:
            raise ValueError(f"{item!r}: must be NAME=IP")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{item!r}: {ip!r} is not an IP address") from None
        pairs.append((name, ip))
    return tuple(pairs)


def split_host_port(value: str) -> tuple[str, int | None]:
    """``10.0.0.7`` → (``10.0.0.7``, None); ``host:25672`` → (``host``, 25672); IPv6 without
    brackets (``fd00::7``) is a host alone."""
    try:
        ipaddress.ip_address(value)
        return value, None
    except ValueError:
        pass
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit():
        return host, int(port)
    return value, None


def parse_bind(value: str) -> str:
    """``--raft-bind``: an address (or HOST:PORT) that is not 0.0.0.0 / ::."""
    v = value.strip()
    if not v:
        return ""
    host, port = split_host_port(v)
    if port is not None and not 0 < port <= 65535:
        raise ValueError("port must be 1..65535")
    if _is_unspecified(host):
        raise ValueError(f"bind the Raft port to a specific address, not {host}")
    return v


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


# --- StatefulSet names ------------------------------------------------------------------


def pod_ordinal(hostname: str, statefulset: str = "") -> tuple[str, int]:
    """``raftmq-2`` → (``raftmq``, 2). With ``statefulset`` given the hostname must be
    ``<statefulset>-<n>``."""
    host = hostname.strip().lower().split(".", 1)[0]
    if statefulset:
        prefix = statefulset + "-"
        rest = host[len(prefix):] if host.startswith(prefix) else ""
        if not rest.isdigit() or (len(rest) > 1 and rest[0] == "0"):
            raise DiscoveryError(
                f"hostname {hostname!r} is not a pod of StatefulSet {statefulset!r} "
                f"(expected {statefulset}-<ordinal>): check {flag('statefulset_name')}"
            )
        return statefulset, int(rest)
    m = _POD_NAME.match(host)
    if not m:
        raise DiscoveryError(
            f"hostname {hostname!r} has no StatefulSet ordinal (expected <name>-<ordinal>, "
            f"e.g. raftmq-0): set HOSTNAME to the pod name, or {flag('peer_discovery')} none"
        )
    return m.group("set"), int(m.group("ordinal"))


def pod_dns_name(pod: str, service: str, namespace: str = "",
                 cluster_domain: str = "cluster.local") -> str:
    """The pod's stable name under the headless service: ``raftmq-0.raftmq-headless`` or, with a
    namespace, ``raftmq-0.raftmq-headless.default.svc.cluster.local``."""
    name = f"{pod}.{service}"
    return f"{name}.{namespace}.svc.{cluster_domain}" if namespace else name


@dataclass(frozen=True)
class Identity:
    node_id: str
    raft_address: str
    peers: tuple[str, ...]
    ordinal: int


def statefulset_identity(
    hostname: str, *, service: str, replicas: int, port: int = DEFAULT_RAFT_PORT,
    statefulset: str = "", namespace: str = "", cluster_domain: str = "cluster.local",
) -> Identity:
    """Node id, Raft address and peers of the pod called ``hostname``."""
    if not service:
        raise DiscoveryError(f"{flag('headless_service')} is required with "
                             f"{flag('peer_discovery')} statefulset")
    if replicas < 1:
        raise DiscoveryError(f"{flag('replicas')} must be set (>= 1) with "
                             f"{flag('peer_discovery')} statefulset")
    if not 0 < port <= 65535:
        raise DiscoveryError(f"{flag('raft_port')} must be 1..65535")
    name, ordinal = pod_ordinal(hostname, statefulset)

    def address(i: int) -> str:
        return f"{pod_dns_name(f'{name}-{i}', service, namespace, cluster_domain)}:{port}"

    peers = tuple(address(i) for i in range(replicas) if i != ordinal)
    return Identity(node_id=f"{name}-{ordinal}", raft_address=address(ordinal), peers=peers,
                    ordinal=ordinal)


# --- resolution -------------------------------------------------------------------------


def system_resolve(host: str) -> str | None:
    """The first IPv4 (else any) address of ``host``, or None."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    addrs = v4 or [str(i[4][0]) for i in infos]
    return addrs[0] if addrs else None


_static: dict[str, str] = {}
_original_getaddrinfo: Callable[..., Any] | None = None


def _static_getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                        proto: int = 0, flags: int = 0) -> Any:
    assert _original_getaddrinfo is not None
    key = host.decode() if isinstance(host, bytes) else host
    ip = _static.get(key.lower().rstrip(".")) if isinstance(key, str) else None
    if ip is None:
        return _original_getaddrinfo(host, port, family, type, proto, flags)
    return _original_getaddrinfo(ip, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def install_static_hosts(pairs: tuple[tuple[str, str], ...] | Mapping[str, str]) -> None:
    """Make ``socket.getaddrinfo`` in this process answer ``pairs`` (name → IP) first.

    Replaces any earlier map; an empty map leaves other names to the system resolver."""
    global _original_getaddrinfo
    _static.clear()
    _static.update(dict(pairs))
    if _original_getaddrinfo is None:
        _original_getaddrinfo = socket.getaddrinfo
        socket.getaddrinfo = _static_getaddrinfo


def static_lookup(pairs: tuple[tuple[str, str], ...], host: str) -> str | None:
    return dict(pairs).get(host.lower().rstrip("."))


# --- putting it together ----------------------------------------------------------------


def configure(cfg: Mapping[str, Any], environ: Mapping[str, str], given: set[str],
              resolve: Resolver | None = None, hostname: str | None = None) -> dict[str, Any]:
    """The Config fields discovery sets, from ``cfg`` (the options as loaded, by name)
    and the environment.

    ``given`` names the options set explicitly (flag or variable); ``resolve`` and ``hostname``
    default to the system's (the resolver hook tests replace)."""
    if cfg["static_hosts"]:
        install_static_hosts(cfg["static_hosts"])
    changes: dict[str, Any] = {}
    for opt in ("amqp_host", "metrics_host", "management_host", "tls_host"):
        ip = static_lookup(cfg["static_hosts"], cfg[opt])
        if ip is not None:
            changes[opt] = ip

    def lookup(host: str) -> str | None:
        ip = static_lookup(cfg["static_hosts"], host)
        if ip is not None:
            return ip
        return (resolve or system_resolve)(host)

    if (cfg["peer_discovery"] == "none" and "raft_address" not in given and not cfg["peers"]
            and _is_unspecified(cfg["raft_address"].rpartition(":")[0])):
        # A single node listening on every interface (a container's defaults): nobody else
        # dials its Raft port, so loopback will do.
        changes["raft_address"] = "127.0.0.1:" + cfg["raft_address"].rpartition(":")[2]
    bind = cfg["raft_bind"]
    if cfg["peer_discovery"] == "statefulset":
        clash = sorted(given & {"node_id", "raft_address", "peers"})
        if clash:
            raise DiscoveryError(
                f"{', '.join(flag(c) for c in clash)} cannot be set with {flag('peer_discovery')} "
                "statefulset: the node id, Raft address and peers come from the pod's hostname"
            )
        host = hostname if hostname is not None else (environ.get("HOSTNAME") or socket.gethostname())
        ident = statefulset_identity(
            host, service=cfg["headless_service"], replicas=cfg["replicas"], port=cfg["raft_port"],
            statefulset=cfg["statefulset_name"], namespace=cfg["namespace"],
            cluster_domain=cfg["cluster_domain"],
        )
        changes.update(node_id=ident.node_id, raft_address=ident.raft_address, peers=ident.peers)
        if not bind:
            bind = environ.get("POD_IP", "").strip()
            if not bind:
                own = lookup(host)
                if own is None:
                    raise DiscoveryError(
                        f"cannot find this pod's own address: set {flag('raft_bind')} (for "
                        f"example from POD_IP, the pod's status.podIP); {host!r} does not resolve"
                    )
                bind = own
            if _is_unspecified(bind):
                raise DiscoveryError(f"{flag('raft_bind')}: the pod's address is {bind}; bind the "
                                     "Raft port to a specific address")
    if bind:
        raft_address = changes.get("raft_address", cfg["raft_address"])
        host, port = split_host_port(bind)
        host = static_lookup(cfg["static_hosts"], host) or host
        if port is None:
            port = int(raft_address.rpartition(":")[2])
        changes["raft_bind"] = f"{host}:{port}"
    return changes
