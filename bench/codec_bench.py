"""Codec micro-benchmark: pamqp's generic codec vs protocol/'s hot path.

    .venv/bin/python bench/codec_bench.py

Decode = one basic.publish + content header + body arriving from a client.
  pamqp: frame.unmarshal for each frame (decodes every property, as a
         pamqp-based server would) ;  fast: ServerConnection.receive_data +
         next_event -> MessagePublished (properties kept as raw bytes).
Encode = basic.deliver + content header + body going to a consumer.
  pamqp: frame.marshal of Deliver, ContentHeader(Properties), ContentBody ;
  fast: ServerConnection.deliver with the stored raw property bytes.
"""

from __future__ import annotations

import os
import sys
import timeit
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pamqp import body as pbody  # noqa: E402
from pamqp import commands, header  # noqa: E402
from pamqp import frame as pframe  # noqa: E402

from protocol import NEED_DATA, ServerConnection  # noqa: E402

PROPS = commands.Basic.Properties(
    content_type="application/json",
    delivery_mode=2,
    headers={"x-trace": "abc123", "attempt": 1, "source": "bench"},
)
RAW_PROPS = PROPS.marshal()


def client_publish(body: bytes) -> bytes:
    return (
        pframe.marshal(commands.Basic.Publish(exchange="amq.direct", routing_key="orders.eu"), 1)
        + pframe.marshal(header.ContentHeader(0, len(body), PROPS), 1)
        + pframe.marshal(pbody.ContentBody(body), 1)
    )


def open_connection() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(
        b"AMQP\x00\x00\x09\x01"
        + pframe.marshal(commands.Connection.StartOk(response="\x00g\x00g"), 0)
    )
    while conn.next_event() is not NEED_DATA:
        pass
    conn.tune()
    conn.receive_data(
        pframe.marshal(commands.Connection.TuneOk(2047, 131072, 60), 0)
        + pframe.marshal(commands.Connection.Open("/"), 0)
        + pframe.marshal(commands.Channel.Open(), 1)
    )
    while conn.next_event() is not NEED_DATA:
        pass
    return conn


def pamqp_decode(data: bytes) -> Callable[[], object]:
    def run() -> object:
        pos, out = 0, []
        while pos < len(data):
            n, _ch, obj = pframe.unmarshal(data[pos:])
            out.append(obj)
            pos += n
        return out

    return run


def fast_decode(data: bytes) -> Callable[[], object]:
    conn = open_connection()

    def run() -> object:
        conn.receive_data(data)
        return conn.next_event()

    return run


def fast_decode_batch(data: bytes, n: int) -> Callable[[], object]:
    conn = open_connection()
    batch = data * n

    def run() -> object:
        conn.receive_data(batch)
        ev = None
        for _ in range(n):
            ev = conn.next_event()
        return ev

    return run


def pamqp_encode(body: bytes) -> Callable[[], bytes]:
    def run() -> bytes:
        return (
            pframe.marshal(
                commands.Basic.Deliver("ctag-1", 12345, False, "amq.direct", "orders.eu"), 1
            )
            + pframe.marshal(header.ContentHeader(0, len(body), PROPS), 1)
            + pframe.marshal(pbody.ContentBody(body), 1)
        )

    return run


def fast_encode(body: bytes) -> Callable[[], bytes]:
    conn = open_connection()

    def run() -> bytes:
        out = conn.deliver(1, "ctag-1", 12345, False, "amq.direct", "orders.eu", RAW_PROPS, body)
        return out if isinstance(out, bytes) else b"".join(out)  # slices for big bodies

    return run


def per_op_us(fn: Callable[[], object], per_call: int = 1) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=number))
    return best / number / per_call * 1e6


def main() -> None:
    # sanity: both encoders produce the same bytes, both decoders the same body
    for size in (100, 4096):
        body = os.urandom(size)
        assert pamqp_encode(body)() == fast_encode(body)()
        assert fast_decode(client_publish(body))().body == body  # type: ignore[attr-defined]

    rows = []
    for label, size in (("100 B", 100), ("4 KiB", 4096)):
        body = os.urandom(size)
        data = client_publish(body)
        dec_p = per_op_us(pamqp_decode(data))
        dec_f = per_op_us(fast_decode(data))
        dec_b = per_op_us(fast_decode_batch(data, 100), per_call=100)
        enc_p = per_op_us(pamqp_encode(body))
        enc_f = per_op_us(fast_encode(body))
        rows.append((label, dec_p, dec_f, dec_b, enc_p, enc_f))

    print(f"Python {sys.version.split()[0]}, best of 5, microseconds per message")
    print()
    print(
        "| size  | publish decode: pamqp | fast | fast, 100/read | speed-up "
        "| deliver encode: pamqp | fast | speed-up |"
    )
    print("|-------|------:|-----:|-----:|-----:|------:|-----:|-----:|")
    for label, dec_p, dec_f, dec_b, enc_p, enc_f in rows:
        print(
            f"| {label} | {dec_p:6.2f} | {dec_f:5.2f} | {dec_b:5.2f} | {dec_p / dec_f:4.1f}x "
            f"| {enc_p:6.2f} | {enc_f:5.2f} | {enc_p / enc_f:4.1f}x |"
        )


if __name__ == "__main__":
    main()
