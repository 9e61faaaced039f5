"""A message's record and what applying decided about records: pure data, no I/O.

The machine (cluster/machine/) decides which messages exist and how many queue entries
refer to each; it writes those decisions to ``State.writes`` as the values below, and
whoever keeps the bytes (the replica, with cluster/store.py) carries them out after the
entry is applied, in order. The record format's limits live here so that the machine
refuses a record the store could not hold before it changes anything.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# exchange, routing key, properties, body
Record = tuple[str, str, bytes, bytes]

HEADER = struct.Struct(">QBBII")  # message id, exchange, routing key, properties, body lengths
# The widest each length field holds: exchange and routing key are AMQP short strings
# (the machine refuses longer ones where a client or API user supplies them:
# cluster/machine/names.py); properties and body fit 4 GiB.
MAX_NAME = 0xFF
MAX_BLOB = 0xFFFFFFFF

# --- what applying decided (State.writes, in order) --------------------------------------
# ``int``: one reference to that message is let go (the record stays readable until the
#          store's next ``collect``: an effect of the same entry may still read it).
# ``Put``: a new message: (id, exchange, routing key, properties, body, references).
Put = tuple[int, str, str, bytes, bytes, int]


class Copy(NamedTuple):
    """A dead-lettered message: a new record with ``source``'s body (still readable: it
    was let go in the same entry) under a new exchange, routing key and properties."""

    msg_id: int
    source: int
    exchange: str
    routing_key: str
    properties: bytes
    refs: int


Write = int | Put | Copy


class StoreError(RuntimeError):
    """The store on disk does not match the snapshot that refers to it."""


class RecordError(StoreError, ValueError):
    """A record the format cannot hold (a name over 255 bytes, ...): refused before
    anything changed."""


def fields(exchange: str, routing_key: str, properties_len: int,
           body_len: int) -> tuple[bytes, bytes]:
    """Exchange and routing key as UTF-8, once checked against the record format."""
    try:
        ex, rk = exchange.encode(), routing_key.encode()
    except UnicodeEncodeError as exc:
        raise RecordError(f"exchange or routing key is not valid UTF-8: {exc}") from None
    if len(ex) > MAX_NAME or len(rk) > MAX_NAME:
        raise RecordError(f"exchange ({len(ex)} bytes) or routing key ({len(rk)} bytes) "
                          f"longer than {MAX_NAME} bytes")
    if properties_len > MAX_BLOB or body_len > MAX_BLOB:
        raise RecordError(f"properties ({properties_len} bytes) or body ({body_len} bytes) "
                          f"longer than {MAX_BLOB} bytes")
    return ex, rk


def check_sizes(exchange: str, routing_key: str, properties_len: int, body_len: int) -> None:
    """Raise RecordError if the record format cannot hold a record of these."""
    if (exchange.isascii() and routing_key.isascii() and len(exchange) <= MAX_NAME
            and len(routing_key) <= MAX_NAME and properties_len <= MAX_BLOB
            and body_len <= MAX_BLOB):
        return  # ASCII: one byte a character, nothing to encode (the publish hot path)
    fields(exchange, routing_key, properties_len, body_len)


def check(exchange: str, routing_key: str, properties: bytes, body: bytes) -> None:
    """Raise RecordError if the record format cannot hold these."""
    check_sizes(exchange, routing_key, len(properties), len(body))


def encode(msg_id: int, exchange: str, routing_key: str, properties: bytes,
           body: bytes) -> bytes:
    ex, rk = fields(exchange, routing_key, len(properties), len(body))
    return b"".join((HEADER.pack(msg_id, len(ex), len(rk), len(properties), len(body)),
                     ex, rk, properties, body))


def decode(data: bytes | bytearray | memoryview, msg_id: int) -> Record:
    got, ex_len, rk_len, props_len, body_len = HEADER.unpack_from(data)
    if got != msg_id:
        raise StoreError(f"record for message {msg_id} holds message {got}")
    p = HEADER.size
    ex = bytes(data[p:p + ex_len]).decode()
    p += ex_len
    rk = bytes(data[p:p + rk_len]).decode()
    p += rk_len
    props = bytes(data[p:p + props_len])
    p += props_len
    return ex, rk, props, bytes(data[p:p + body_len])
