"""What a connection and its channels count on the node holding them, for the management
API's per-connection and per-channel figures (RabbitMQ's connection ``recv_oct`` /
``send_oct`` / ``recv_cnt`` / ``send_cnt`` and channel ``message_stats``), and the node's
queue declarations (its overview's ``churn_rates.queue_declared``).

Only the node a client is connected to sees its bytes and its channel's methods, so these
are node-local, as the peer address and the client properties are (node/mgmt/objects.py
``connection_json``; another node's listing asks this one for them). Plain counters, incremented on the hot path: no locks (one event
loop), no allocation per count. Rates are sampled by node/mgmt/rates.py.
"""

from __future__ import annotations

from collections.abc import Iterable

# RabbitMQ 3.10's channel message_stats, in this order (``deliver_get`` is their sum of
# deliver, deliver_no_ack, get and get_no_ack, added where they are shown).
CHANNEL = ("publish", "confirm", "return_unroutable", "drop_unroutable", "deliver",
           "deliver_no_ack", "get", "get_no_ack", "get_empty", "redeliver", "ack")
OCTETS = ("recv_oct", "recv_cnt", "send_oct", "send_cnt")


class ChannelStats:
    """One channel's counts since it opened."""

    __slots__ = CHANNEL

    def __init__(self) -> None:
        self.publish = self.confirm = self.return_unroutable = self.drop_unroutable = 0
        self.deliver = self.deliver_no_ack = self.get = self.get_no_ack = 0
        self.get_empty = self.redeliver = self.ack = 0

    def delivered(self, no_ack: bool, redelivered: bool) -> None:
        """A basic.deliver written to the client."""
        if no_ack:
            self.deliver_no_ack += 1
        else:
            self.deliver += 1
        if redelivered:
            self.redeliver += 1

    def got(self, redelivered: bool) -> None:
        """A basic.get-ok written to the client (the effect does not say whether the get
        was no-ack: every one is counted as ``get``)."""
        self.get += 1
        if redelivered:
            self.redeliver += 1

    def counts(self) -> tuple[int, ...]:
        return (self.publish, self.confirm, self.return_unroutable, self.drop_unroutable,
                self.deliver, self.deliver_no_ack, self.get, self.get_no_ack, self.get_empty,
                self.redeliver, self.ack)


class Octets:
    """One connection's bytes and socket reads / writes."""

    __slots__ = OCTETS

    def __init__(self) -> None:
        self.recv_oct = self.recv_cnt = self.send_oct = self.send_cnt = 0

    def received(self, size: int) -> None:
        self.recv_oct += size
        self.recv_cnt += 1

    def sent(self, parts: Iterable[bytes | memoryview]) -> None:
        """One write of ``parts`` (a writelines)."""
        for part in parts:
            self.send_oct += len(part)
        self.send_cnt += 1

    def counts(self) -> tuple[int, ...]:
        return self.recv_oct, self.recv_cnt, self.send_oct, self.send_cnt


class Declared:
    """queue.declare-oks a node has sent, by node id (a process may run several nodes:
    tests/node/inproc.py)."""

    by_node: dict[str, int] = {}

    @classmethod
    def count(cls, node_id: str) -> None:
        cls.by_node[node_id] = cls.by_node.get(node_id, 0) + 1

    @classmethod
    def of(cls, node_id: str) -> int:
        return cls.by_node.get(node_id, 0)
