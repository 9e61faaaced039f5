"""Queue and consumer arguments: validation as RabbitMQ 3.10's rabbit_amqqueue does
(``check_arguments`` / ``check_consume_arguments``), and parsing into a queue's
feature fields.

Arguments arrive decoded by the protocol layer into Python values, so the AMQP
field type is inferred from the Python type (int -> long, str/bytes -> longstr…).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from typing import Any

from cluster.machine import errors as E
from cluster.machine.errors import error, rs
from cluster.machine.features import make_slow, needs_slow
from cluster.machine.names import name_problem
from cluster.machine.state import Queue

MAX_EXPIRY = 4294967295  # rabbit_misc's ?MAX_EXPIRY_TIMER
MAX_PRIORITY = 255  # rabbit_priority_queue's ?MAX_SUPPORTED_PRIORITY
OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")


def type_name(v: Any) -> str:
    """The AMQP field type RabbitMQ would name in an error for this value."""
    if v is None:
        return "void"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str | bytes):
        return "longstr"
    if isinstance(v, decimal.Decimal):
        return "decimal"
    if isinstance(v, datetime.datetime):
        return "timestamp"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list | tuple):
        return "array"
    return type(v).__name__


def text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _erl_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Each check returns None (ok) or the Erlang term RabbitMQ reports, as text.
_Check = Callable[[Any, dict[str, Any]], str | None]


def _int(v: Any, _args: dict[str, Any]) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return None
    return f"{{unacceptable_type,{type_name(v)}}}"


def _non_neg_int(v: Any, args: dict[str, Any]) -> str | None:
    err = _int(v, args)
    if err is None and v < 0:
        return f"{{value_negative,{v}}}"
    return err


def _expiry(v: int) -> str | None:
    if v < 0:
        return f"{{value_negative,{v}}}"
    if v > MAX_EXPIRY:
        return f"{{value_too_large,{v}}}"
    return None


def _expires(v: Any, args: dict[str, Any]) -> str | None:
    err = _int(v, args)
    if err is not None:
        return err
    if v == 0:
        return "{value_zero,0}"
    return _expiry(v)


def _message_ttl(v: Any, args: dict[str, Any]) -> str | None:
    err = _int(v, args)
    return err if err is not None else _expiry(v)


def _longstr(v: Any, _args: dict[str, Any]) -> str | None:
    return None if isinstance(v, str | bytes) else f"{{unacceptable_type,{type_name(v)}}}"


def _short(v: Any, args: dict[str, Any]) -> str | None:
    """A long string that becomes a name or a routing key (dead-lettering): it must fit
    the short string it becomes (names.py), as decoded (invalid UTF-8 in bytes grows)."""
    err = _longstr(v, args)
    if err is None:
        problem = name_problem(text(v))
        if problem is not None:
            return f"{{value_too_long,{problem}}}"
    return err


def _dlrk(v: Any, args: dict[str, Any]) -> str | None:
    err = _short(v, args)
    if err is None and "x-dead-letter-exchange" not in args:
        return "routing_key_but_no_dlx_defined"
    return err


def _max_priority(v: Any, args: dict[str, Any]) -> str | None:
    err = _non_neg_int(v, args)
    if err is None and v > MAX_PRIORITY:
        return f"{{max_value_exceeded,{v}}}"
    return err


def _one_of(values: tuple[str, ...], error: str) -> _Check:
    def check(v: Any, args: dict[str, Any]) -> str | None:
        err = _longstr(v, args)
        if err is None and text(v) not in values:
            return error
        return err
    return check


def _bool(v: Any, _args: dict[str, Any]) -> str | None:
    return None if isinstance(v, bool) else f"{{unacceptable_type,{type_name(v)}}}"


# In rabbit_amqqueue:declare_args() order: the first failing argument is reported.
_QUEUE_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("x-expires", _expires),
    ("x-message-ttl", _message_ttl),
    ("x-dead-letter-exchange", _short),
    ("x-dead-letter-routing-key", _dlrk),
    ("x-max-length", _non_neg_int),
    ("x-max-length-bytes", _non_neg_int),
    ("x-max-in-memory-length", _non_neg_int),
    ("x-max-in-memory-bytes", _non_neg_int),
    ("x-max-priority", _max_priority),
    ("x-overflow", _one_of(OVERFLOW, "invalid_overflow")),
    ("x-queue-mode", _one_of(("default", "lazy"), "invalid_queue_mode")),
    ("x-single-active-consumer", _bool),
)

# Checked from command level 4 only (a member of an earlier release accepts any value):
# x-consumer-timeout (RabbitMQ 3.12's, in ms), read by the node (node/amqp/connection.py).
_LEVEL4_QUEUE_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("x-consumer-timeout", _non_neg_int),
)

_CONSUME_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("x-priority", _int),
    ("x-cancel-on-ha-failover", _bool),
)


def _check(kind: str, name: str, vhost: str, args: dict[str, Any],
           checks: tuple[tuple[str, _Check], ...], method: tuple[int, int]) -> None:
    for key, check in checks:
        if key in args:
            err = check(args[key], args)
            if err is not None:
                raise error(E.PRECONDITION_FAILED,
                                f"invalid arg '{key}' for {rs(kind, name, vhost)}: {err}", method)


def validate_queue_args(name: str, vhost: str, args: dict[str, Any], level: int = 4) -> None:
    """Raise 406 as RabbitMQ does at queue.declare (new queues only); ``level``: the
    cluster's command level (the machine passes ``State.level``)."""
    m = E.QUEUE_DECLARE
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str | bytes):
        # rabbit_channel checks the DLX's type before rabbit_amqqueue's checks
        raise error(E.PRECONDITION_FAILED,
                        f"invalid type '{type_name(dlx)}' for arg 'x-dead-letter-exchange' in "
                        f"{rs('queue', name, vhost)}", m)
    _check("queue", name, vhost, args, _QUEUE_CHECKS, m)
    if level >= 4:
        _check("queue", name, vhost, args, _LEVEL4_QUEUE_CHECKS, m)


def validate_consume_args(name: str, vhost: str, args: dict[str, Any]) -> None:
    _check("queue", name, vhost, args, _CONSUME_CHECKS, E.BASIC_CONSUME)


def configure(q: Queue, args: dict[str, Any] | None = None) -> None:
    """Set the queue's feature fields from its (validated) arguments, or from ``args``: its
    arguments with its policies' values resolved in (cluster/machine/policies.py)."""
    args = q.arguments if args is None else args
    q.message_ttl = args.get("x-message-ttl")
    if "x-dead-letter-exchange" in args:
        q.dlx = text(args["x-dead-letter-exchange"])
        if "x-dead-letter-routing-key" in args:
            q.dlrk = text(args["x-dead-letter-routing-key"])
    q.max_length = args.get("x-max-length")
    q.max_length_bytes = args.get("x-max-length-bytes")
    if "x-overflow" in args:
        q.overflow = text(args["x-overflow"])
    q.expires = args.get("x-expires")
    q.max_priority = args.get("x-max-priority") or 0
    q.single_active = args.get("x-single-active-consumer") is True
    q.delivery_limit = delivery_limit(args.get("x-delivery-limit"))
    if args.get("x-message-deduplication") is not True:
        q.dedup_ids = q.dedup_keys = None
    elif q.dedup_ids is None:  # (kept when the queue is configured again: policies)
        q.dedup_ids, q.dedup_keys = {}, {}
    if needs_slow(q) and not q.slow:
        make_slow(q)


# A delivery limit no count reaches (x-delivery-limit that is not an integer).
NO_DELIVERY_LIMIT = 1 << 62


def delivery_limit(v: Any) -> int | None:
    """x-delivery-limit (or the policy key delivery-limit, resolved into it) as a limit;
    None when absent. RabbitMQ 3.10's quorum queues accept any value and compare the
    delivery count with it: an integer is the limit (a negative one lets no message be
    returned); anything else is never exceeded (Erlang orders numbers before every other
    term), but returns are still counted and shown (x-delivery-count). (A classic queue
    refuses the argument; RaftMQ's queues are replicated as quorum queues are, and
    follow them.)"""
    if v is None:
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else NO_DELIVERY_LIMIT


def consumer_timeout(args: dict[str, Any], default_ms: int) -> int:
    """The consumer timeout in ms that applies to a queue with these arguments (its
    x-consumer-timeout, else the node's ``default_ms``; 0: none)."""
    v = args.get("x-consumer-timeout")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default_ms


def consumer_priority(args: dict[str, Any]) -> int:
    v = args.get("x-priority", 0)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def parse_expiration(raw: str) -> int | str:
    """The per-message TTL in ms, or the error term RabbitMQ reports for it
    (rabbit_basic:parse_expiration, using Erlang's string:to_integer)."""
    i = 0
    n = len(raw)
    if i < n and raw[i] in "+-":
        i += 1
    j = i
    while j < n and "0" <= raw[j] <= "9":
        j += 1
    if j == i:
        return "no_integer"
    if j < n:
        return f"{{leftover_string,{_erl_string(raw[j:])}}}"
    value = int(raw[:j])
    err = _expiry(value)
    return err if err is not None else value
