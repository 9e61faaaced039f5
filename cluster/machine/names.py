"""The one limit on names and routing keys, for every path that creates them.

AMQP carries exchange and queue names, routing keys and consumer tags as short
strings: at most 255 bytes of UTF-8. Through AMQP framing nothing longer can arrive,
but the management API and definitions import propose the same commands without that
framing, and a queue argument (x-dead-letter-exchange, x-dead-letter-routing-key,
alternate-exchange) is a long string that later becomes a name or a routing key. So
the machine checks these itself, before anything changes, and the node's API side
reuses :func:`name_problem` to answer 400 before it proposes.

The message store (cluster/store.py) writes exchange and routing key with a one-byte
length: what passes here always fits it.
"""

from __future__ import annotations

from cluster.machine import errors as E
from cluster.machine.errors import AMQPError, error

MAX_NAME_BYTES = 255  # an AMQP short string

def name_problem(value: str) -> str | None:
    """None if ``value`` fits an AMQP short string, else why not (for an error text).
    O(1) for ASCII (``str.isascii`` reads a flag), one encode otherwise: the publish
    path calls it for every message."""
    n = len(value)
    if value.isascii():
        return None if n <= MAX_NAME_BYTES else f"{n} bytes, more than {MAX_NAME_BYTES}"
    try:
        n = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 encoding at all
        return "not valid UTF-8"
    if n > MAX_NAME_BYTES:
        return f"{n} bytes of UTF-8, more than {MAX_NAME_BYTES}"
    return None


def shown(value: str, limit: int = 40) -> str:
    """A name for an error text (which is itself a short string): shortened."""
    return value if len(value) <= limit else f"{value[:limit]}..."


def check_name(kind: str, value: str, vhost: str, method: tuple[int, int]) -> None:
    """406 PRECONDITION_FAILED unless ``value`` (a ``kind``: "queue name", "exchange
    name", "routing key", "consumer tag") fits a short string."""
    problem = name_problem(value)
    if problem is not None:
        raise name_error(kind, value, vhost, problem, method)


def name_error(kind: str, value: str, vhost: str, problem: str,
               method: tuple[int, int]) -> AMQPError:
    return error(E.PRECONDITION_FAILED,
                 f"{kind} '{shown(value)}' in vhost '{shown(vhost)}' is too long or invalid: "
                 f"{problem} (names and routing keys are AMQP short strings)", method)
