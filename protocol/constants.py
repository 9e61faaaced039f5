"""AMQP 0-9-1 constants: reply codes (spec names) and framing limits.

Reply codes are plain ints so they can be compared with what pamqp decodes
and passed straight into connection.close / channel.close.
"""

from __future__ import annotations

# --- reply codes (amqp0-9-1.xml <constant>) -------------------------------
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311  # soft
NO_ROUTE = 312  # soft (basic.return)
NO_CONSUMERS = 313  # soft (basic.return, immediate)
CONNECTION_FORCED = 320  # hard
INVALID_PATH = 402  # hard
ACCESS_REFUSED = 403  # soft
NOT_FOUND = 404  # soft
RESOURCE_LOCKED = 405  # soft
PRECONDITION_FAILED = 406  # soft
FRAME_ERROR = 501  # hard
SYNTAX_ERROR = 502  # hard
COMMAND_INVALID = 503  # hard
CHANNEL_ERROR = 504  # hard
UNEXPECTED_FRAME = 505  # hard
RESOURCE_ERROR = 506  # hard
NOT_ALLOWED = 530  # hard
NOT_IMPLEMENTED = 540  # hard
INTERNAL_ERROR = 541  # hard

REPLY_NAMES: dict[int, str] = {
    200: "REPLY_SUCCESS",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}
SOFT_ERRORS = frozenset({311, 312, 313, 403, 404, 405, 406})

# --- framing ---------------------------------------------------------------
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MIN_SIZE = 4096
FRAME_OVERHEAD = 8  # 7-byte frame header + frame-end octet
