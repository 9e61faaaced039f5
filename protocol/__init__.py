"""AMQP 0-9-1 server protocol without I/O: bytes in, events out; calls in, bytes out.

The names below load on first use (PEP 562), so importing a standard-library-only
module of this package (``protocol.fields``, ``protocol.constants``,
``protocol.errors``, as the state machine does) does not pull in pamqp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocol.connection import ServerConnection, server_properties
    from protocol.errors import AMQPConnectionError, AMQPError, BadProtocolHeader, ChannelError
    from protocol.events import (
        NEED_DATA,
        AckReceived,
        Event,
        HeartbeatReceived,
        MessagePublished,
        MethodReceived,
        NackReceived,
        ProtocolHeaderReceived,
    )

_WHERE = {
    "ServerConnection": "protocol.connection",
    "server_properties": "protocol.connection",
    "AMQPConnectionError": "protocol.errors",
    "AMQPError": "protocol.errors",
    "BadProtocolHeader": "protocol.errors",
    "ChannelError": "protocol.errors",
    "NEED_DATA": "protocol.events",
    "AckReceived": "protocol.events",
    "Event": "protocol.events",
    "HeartbeatReceived": "protocol.events",
    "MessagePublished": "protocol.events",
    "MethodReceived": "protocol.events",
    "NackReceived": "protocol.events",
    "ProtocolHeaderReceived": "protocol.events",
}

__all__ = [
    "NEED_DATA", "AMQPConnectionError", "AMQPError", "AckReceived", "BadProtocolHeader",
    "ChannelError", "Event", "HeartbeatReceived", "MessagePublished", "MethodReceived",
    "NackReceived", "ProtocolHeaderReceived", "ServerConnection", "server_properties",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
