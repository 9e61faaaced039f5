"""Publish numbered persistent messages with publisher confirms, failing over between nodes
when one dies, then read the queue back and check that every confirmed message is there.

    python3 -m pip install pika
    python3 deploy/confirm_check.py --count 5000 \\
        amqp://raftmq:PASS@localhost:5672/ amqp://raftmq:PASS@localhost:5673/ \\
        amqp://raftmq:PASS@localhost:5674/

Kill a node while it runs (docker compose kill n1). A message the broker confirmed is on disk
on a majority of nodes, so it must come back; a message in flight when the connection broke is
sent again (so it may be there twice: at-least-once). Exit status 0 when nothing confirmed is
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import pika
import pika.exceptions

RETRYABLE = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
             pika.exceptions.StreamLostError, ConnectionError, OSError)


class Failover:
    """A blocking connection to the first URL that answers, trying them in turn."""

    def __init__(self, urls: list[str], deadline_s: float) -> None:
        self.urls = urls
        self.deadline = time.monotonic() + deadline_s
        self.index = 0
        self.conn: pika.BlockingConnection | None = None

    def channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        while True:
            url = self.urls[self.index % len(self.urls)]
            params = pika.URLParameters(url)
            params.socket_timeout = 5
            params.blocked_connection_timeout = 10
            try:
                self.conn = pika.BlockingConnection(params)
                print(f"connected to {params.host}:{params.port}", flush=True)
                return self.conn.channel()
            except RETRYABLE as e:
                print(f"cannot connect to {params.host}:{params.port}: {e!r}", flush=True)
                self.index += 1
                if time.monotonic() > self.deadline:
                    raise SystemExit("gave up: no node answered") from e
                time.sleep(0.5)

    def next(self) -> None:
        self.close()
        self.index += 1

    def close(self) -> None:
        if self.conn is not None and self.conn.is_open:
            with contextlib.suppress(*RETRYABLE):
                self.conn.close()
        self.conn = None


def publish(nodes: Failover, queue: str, count: int) -> set[int]:
    confirmed: set[int] = set()
    ch = nodes.channel()
    ch.queue_delete(queue)
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    i = 0
    while i < count:
        try:
            ch.basic_publish("", queue, str(i).encode(), props)  # returns once confirmed
            confirmed.add(i)
            i += 1
            if i % 500 == 0:
                print(f"confirmed {i}", flush=True)
        except RETRYABLE as e:
            print(f"message {i} not confirmed ({e!r}); reconnecting and sending it again",
                  flush=True)
            nodes.next()
            ch = nodes.channel()
            ch.queue_declare(queue, durable=True)
            ch.confirm_delivery()
    return confirmed


def read_back(nodes: Failover, queue: str) -> list[int]:
    while True:
        seen: list[int] = []
        try:
            ch = nodes.channel()
            while True:
                method, _props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                seen.append(int(body))
            # Unacked messages go back to the queue when the connection closes.
            nodes.close()
            return seen
        except RETRYABLE as e:
            print(f"read interrupted ({e!r}); reading again from another node", flush=True)
            nodes.next()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("urls", nargs="+", help="amqp:// URLs of the nodes, tried in turn")
    p.add_argument("--count", type=int, default=5000, help="messages to publish")
    p.add_argument("--queue", default="confirm-check")
    p.add_argument("--timeout", type=float, default=120, help="give up after this long, s")
    args = p.parse_args(argv)
    nodes = Failover(args.urls, args.timeout)
    started = time.monotonic()
    confirmed = publish(nodes, args.queue, args.count)
    nodes.close()
    print(f"published: {len(confirmed)} confirmed in {time.monotonic() - started:.1f}s", flush=True)
    seen = read_back(nodes, args.queue)
    missing = sorted(confirmed - set(seen))
    dupes = len(seen) - len(set(seen))
    print(f"read back: {len(seen)} messages ({dupes} sent twice after a failover); "
          f"confirmed but missing: {len(missing)} {missing[:10] if missing else ''}".rstrip())
    print("OK: every confirmed message is there" if not missing else "LOST confirmed messages")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
