"""AMQP errors raised by command handlers and turned into effects by ``apply``.

The reply codes and the error type are the protocol layer's (one set for the
whole broker; both modules are standard library only, as the machine must be).
Handlers validate before they mutate, so raising leaves the state untouched;
``apply`` then closes the channel (soft error) or the connection (hard error).
"""

from __future__ import annotations

from protocol.constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
)
from protocol.errors import AMQPError

__all__ = [
    "ACCESS_REFUSED", "COMMAND_INVALID", "CONNECTION_FORCED", "FRAME_ERROR", "INTERNAL_ERROR", "NOT_ALLOWED",
    "NOT_FOUND", "NOT_IMPLEMENTED", "PRECONDITION_FAILED", "RESOURCE_LOCKED", "AMQPError",
    "error",
]

# Method (class_id, method_id) pairs used in error replies.
CHANNEL_FLOW = (20, 20)
EXCHANGE_DECLARE = (40, 10)
EXCHANGE_DELETE = (40, 20)
EXCHANGE_BIND = (40, 30)
EXCHANGE_UNBIND = (40, 40)
QUEUE_DECLARE = (50, 10)
QUEUE_BIND = (50, 20)
QUEUE_PURGE = (50, 30)
QUEUE_DELETE = (50, 40)
QUEUE_UNBIND = (50, 50)
BASIC_QOS = (60, 10)
BASIC_CONSUME = (60, 20)
BASIC_CANCEL = (60, 30)
BASIC_PUBLISH = (60, 40)
BASIC_GET = (60, 70)
BASIC_ACK = (60, 80)
BASIC_REJECT = (60, 90)
BASIC_RECOVER = (60, 110)
BASIC_NACK = (60, 120)



def error(code: int, text: str, method: tuple[int, int]) -> AMQPError:
    """The error ``code`` (protocol/constants.py) for ``method``; ``text`` gets
    RabbitMQ's "NAME - " prefix. Soft codes close the channel, the others the
    connection (``AMQPError.hard``)."""
    return AMQPError(code, text, *method)


def rs(kind: str, name: str, vhost: str) -> str:
    """RabbitMQ's resource description: "queue 'q' in vhost '/'"."""
    return f"{kind} '{name}' in vhost '{vhost}'"


def no_queue(name: str, vhost: str, method: tuple[int, int]) -> AMQPError:
    return error(NOT_FOUND, f"no {rs('queue', name, vhost)}", method)


def no_exchange(name: str, vhost: str, method: tuple[int, int]) -> AMQPError:
    return error(NOT_FOUND, f"no {rs('exchange', name, vhost)}", method)


def locked(name: str, vhost: str, method: tuple[int, int]) -> AMQPError:
    return error(
        RESOURCE_LOCKED,
        f"cannot obtain exclusive access to locked {rs('queue', name, vhost)}. It could be "
        "originally declared on another connection or the exclusive property value does "
        "not match that of the original declaration.",
        method,
    )


def default_exchange_refused(method: tuple[int, int]) -> AMQPError:
    return error(ACCESS_REFUSED, "operation not permitted on the default exchange", method)


def fmt_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)
