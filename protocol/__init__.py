"""AMQP 0-9-1 server protocol without I/O: bytes in, events out; calls in, bytes out."""

from protocol.connection import ServerConnection, default_server_properties
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

__all__ = [
    "NEED_DATA",
    "AMQPConnectionError",
    "AMQPError",
    "AckReceived",
    "BadProtocolHeader",
    "ChannelError",
    "Event",
    "HeartbeatReceived",
    "MessagePublished",
    "MethodReceived",
    "NackReceived",
    "ProtocolHeaderReceived",
    "ServerConnection",
    "default_server_properties",
]
