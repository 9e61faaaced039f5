"""Dynamic shovels (RabbitMQ's ``shovel`` runtime parameters), replicated: the definition
of every shovel and the status its runner last reported. Which node runs a shovel and how
is the node's business (node/shovel/); the machine only keeps what every member must agree
on, so that the node that takes over after a failure knows what to run and how far the
previous one got.

:func:`definition` is RabbitMQ 3.10's validation of a shovel's value (the keys of
``rabbit_shovel_parameters`` for AMQP 0-9-1 at both ends), used at the API edge (a 400
with the reason) and again here (a value that does not pass is ignored: a bug of the edge
or a proposer of another release, never a Fault)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster.machine import access

if TYPE_CHECKING:
    from cluster import commands as C
    from cluster.effects import Effect
    from cluster.machine.state import State

COMPONENT = "shovel"
ACK_MODES = ("on-confirm", "on-publish", "no-ack")
DEFAULT_PREFETCH = 1000  # RabbitMQ's src-prefetch-count default
DEFAULT_RECONNECT_S = 1.0  # RabbitMQ's reconnect-delay default (seconds)
MAX_PREFETCH = 65535
MAX_NAME_BYTES = 255  # queue and exchange names (AMQP shortstr)
MAX_URI_BYTES = 4096
STATES = ("starting", "running", "terminated")

# Keys RabbitMQ 3.10 accepts for an amqp091 -> amqp091 shovel (and their pre-3.7 names).
# src-exchange (a temporary queue bound to an exchange) and dest-publish-properties are
# not supported by RaftMQ's runner: refused with that reason rather than ignored.
KNOWN = frozenset((
    "src-uri", "src-queue", "src-exchange", "src-exchange-key", "src-prefetch-count",
    "src-delete-after", "src-protocol", "dest-uri", "dest-exchange", "dest-exchange-key",
    "dest-queue", "dest-protocol", "dest-add-forward-headers", "dest-add-timestamp-header",
    "dest-publish-properties", "ack-mode", "reconnect-delay",
    "prefetch-count", "delete-after", "add-forward-headers", "publish-properties",
))


@dataclass(frozen=True, slots=True)
class Definition:
    """A shovel's value, checked and with RabbitMQ's defaults filled in."""

    src_uris: tuple[str, ...]
    src_queue: str
    dest_uris: tuple[str, ...]
    dest_exchange: str | None  # None: not given (dest_queue, or the message's own)
    dest_exchange_key: str | None
    dest_queue: str | None
    prefetch: int
    ack_mode: str
    reconnect_delay: float
    delete_after: str | int  # "never", "queue-length" or a message count
    add_forward_headers: bool
    add_timestamp_header: bool


def _uris(value: dict[str, Any], key: str) -> tuple[str, ...]:
    raw = value.get(key)
    if raw is None:
        raise ValueError(f'Key "{key}" not found in shovel')
    uris = (raw,) if isinstance(raw, str) else raw
    if not isinstance(uris, list | tuple) or not uris:
        raise ValueError(f"{key}: a URI or a non-empty list of URIs is required")
    for uri in uris:
        if not isinstance(uri, str) or len(uri.encode()) > MAX_URI_BYTES:
            raise ValueError(f"{key}: each URI must be a string of at most {MAX_URI_BYTES} "
                             "bytes")
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme.lower() not in ("amqp", "amqps"):
            raise ValueError(f"{key}: {uri[:80]!r} is not an amqp:// or amqps:// URI")
        host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        port = host.rpartition("]")[2].partition(":")[2] if ":" in host.rpartition("]")[2] \
            else None
        if port is not None and not (port.isdigit() and len(port) <= 5
                                     and 0 < int(port) < 65536):
            raise ValueError(f"{key}: {uri[:80]!r} is not a valid URI (port {port[:10]!r})")
    return tuple(uris)


def _name(value: dict[str, Any], key: str) -> str | None:
    name = value.get(key)
    if name is None:
        return None
    if not isinstance(name, str) or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{key}: a string of at most {MAX_NAME_BYTES} bytes is required")
    return name


def _shown(value: Any) -> str:
    """A value in a refusal, shortened (RabbitMQ quotes the value it refused)."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first(value: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in value:
            return value[key]
    return None


def definition(value: Any) -> Definition:
    """RabbitMQ's checks of a shovel parameter's value; raises ValueError with the reason."""
    if not isinstance(value, dict):
        raise ValueError("the shovel's value must be an object")
    unknown = sorted(str(k)[:60] for k in value if k not in KNOWN)
    if unknown:
        raise ValueError(f"Unrecognised terms {unknown} in shovel")
    for key in ("src-protocol", "dest-protocol"):
        if value.get(key, "amqp091") != "amqp091":
            raise ValueError(f"{key}: only amqp091 is supported by RaftMQ")
    src_uris = _uris(value, "src-uri")
    dest_uris = _uris(value, "dest-uri")
    src_queue = _name(value, "src-queue")
    if value.get("src-exchange") is not None:
        raise ValueError("src-exchange is not supported by RaftMQ's shovel: give src-queue")
    if src_queue is None:
        raise ValueError("Must specify 'src-exchange' or 'src-queue'")
    dest_queue = _name(value, "dest-queue")
    dest_exchange = _name(value, "dest-exchange")
    dest_key = _name(value, "dest-exchange-key")
    if dest_queue is not None and dest_exchange is not None:
        raise ValueError("Cannot specify 'dest-exchange' and 'dest-queue'")
    if dest_queue is not None and dest_key is not None:
        raise ValueError("Cannot specify 'dest-exchange-key' and 'dest-queue'")
    if _first(value, "dest-publish-properties", "publish-properties") not in (None, {}):
        raise ValueError("dest-publish-properties is not supported by RaftMQ's shovel")
    prefetch = _first(value, "src-prefetch-count", "prefetch-count")
    prefetch = DEFAULT_PREFETCH if prefetch is None else prefetch
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or \
            not 1 <= prefetch <= MAX_PREFETCH:
        raise ValueError(f"src-prefetch-count: an integer from 1 to {MAX_PREFETCH}")
    ack_mode = value.get("ack-mode", "on-confirm")
    if ack_mode not in ACK_MODES:
        raise ValueError(f'ack-mode should be one of ["no-ack","on-publish","on-confirm"], '
                         f"actually was {_shown(ack_mode)}")
    delay = value.get("reconnect-delay", DEFAULT_RECONNECT_S)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or \
            not 0 <= delay <= 3600:
        raise ValueError("reconnect-delay: a number of seconds from 0 to 3600")
    delete_after = _first(value, "src-delete-after", "delete-after")
    delete_after = "never" if delete_after is None else delete_after
    if not (delete_after in ("never", "queue-length") or (
            isinstance(delete_after, int) and not isinstance(delete_after, bool)
            and 0 <= delete_after < 1 << 63)):
        raise ValueError('src-delete-after should be a number greater than or equal to 0, '
                         f'"never" or "queue-length", actually was {_shown(delete_after)}')
    flags = []
    for keys in (("dest-add-forward-headers", "add-forward-headers"),
                 ("dest-add-timestamp-header",)):
        flag = _first(value, *keys)
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{keys[0]}: true or false")
        flags.append(bool(flag))
    return Definition(src_uris, src_queue, dest_uris, dest_exchange, dest_key, dest_queue,
                      prefetch, ack_mode, float(delay), delete_after, flags[0], flags[1])


def redact(uri: str) -> str:
    """``uri`` without its password (statuses, logs, x-shovelled headers), as RabbitMQ shows
    a shovel's URIs."""
    scheme, sep, rest = uri.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return uri
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}{rest[end:]}"


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name.encode()) <= MAX_NAME_BYTES


def check_parameter(vhost: str, name: Any, value: Any, vhosts: Any) -> None:
    """The checks of PUT /api/parameters/shovel and of a definitions import: raises
    ValueError with RabbitMQ's kind of reason."""
    if vhost not in vhosts:
        raise ValueError(f"vhost {vhost[:60]!r} does not exist")
    if not valid_name(name):
        raise ValueError(f"a shovel name of 1 to 255 bytes is required, not {name!r:.60}")
    definition(value)


def parameter_json(sh: Shovel) -> dict[str, Any]:
    """A shovel as RabbitMQ's runtime parameter (the API's and a definitions export's)."""
    return {"value": dict(sh.value), "vhost": sh.vhost, "component": COMPONENT,
            "name": sh.name}


@dataclass(eq=True)
class Shovel:
    """One shovel: its definition (the parameter value as given) and its last status."""

    vhost: str
    name: str
    value: dict[str, Any]
    state: str = "starting"
    reason: str = ""  # why it terminated
    node: str = ""  # the node that reported the status ("" before any did)
    moved: int = 0  # messages moved since the definition was set (acked upstream)
    at_ms: int = 0  # now_ms of the last change of status
    generation: int = 0  # bumped by a restart request: the runner restarts it


# --- commands ------------------------------------------------------------------------------


def shovel_set(state: State, cmd: C.ShovelSet, out: list[Effect]) -> None:
    if cmd.vhost not in state.vhosts or not valid_name(cmd.name):
        return
    try:
        definition(cmd.value)
    except ValueError:
        return  # checked at the edge: a proposer of another release, never a Fault
    key = (cmd.vhost, cmd.name)
    old = state.shovels.get(key)
    value = dict(cmd.value)
    if old is not None and old.value == value:
        return  # the same definition again: it keeps running as it is
    state.shovels[key] = Shovel(cmd.vhost, cmd.name, value, at_ms=state.now_ms,
                                generation=old.generation + 1 if old is not None else 0)


def vhost_delete(state: State, cmd: C.VHostDelete, out: list[Effect]) -> None:
    """access.vhost_delete, and the vhost's shovels go with it, as RabbitMQ's runtime
    parameters do (before level 4 there are none: the same as before)."""
    access.vhost_delete(state, cmd, out)
    if cmd.name not in state.vhosts:
        for key in [k for k in state.shovels if k[0] == cmd.name]:
            del state.shovels[key]


def shovel_clear(state: State, cmd: C.ShovelClear, out: list[Effect]) -> None:
    state.shovels.pop((cmd.vhost, cmd.name), None)


def shovel_status(state: State, cmd: C.ShovelStatus, out: list[Effect]) -> None:
    sh = state.shovels.get((cmd.vhost, cmd.name))
    if sh is None:
        return  # deleted meanwhile
    if cmd.state == "restart":
        sh.generation += 1
        sh.state, sh.reason, sh.at_ms = "starting", "", state.now_ms
        return
    if cmd.state not in STATES or not isinstance(cmd.moved, int) or cmd.moved < 0:
        return
    if (sh.state, sh.node) != (cmd.state, cmd.node) or sh.reason != cmd.reason:
        sh.at_ms = state.now_ms
    sh.state, sh.reason, sh.node = cmd.state, cmd.reason[:1024], cmd.node
    sh.moved = max(sh.moved, cmd.moved)
