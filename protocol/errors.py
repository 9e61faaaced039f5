"""Protocol errors. Each carries what connection.close / channel.close needs."""

from __future__ import annotations

from protocol.constants import PROTOCOL_HEADER, REPLY_NAMES, SOFT_ERRORS


class AMQPError(Exception):
    """An AMQP exception: ``reply_code`` is the spec's reply code; ``class_id``
    and ``method_id`` name the offending method (0 when unknown / not a method)."""

    def __init__(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        name = REPLY_NAMES.get(reply_code)
        # Clients (and people) expect RabbitMQ's form: "NOT_FOUND - no queue 'q'".
        if name and not reply_text.startswith(name):
            reply_text = f"{name} - {reply_text}"
        super().__init__(reply_code, reply_text, class_id, method_id)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def hard(self) -> bool:
        """A connection error (the spec's "hard" codes), not a channel error."""
        return self.reply_code not in SOFT_ERRORS

    def __str__(self) -> str:
        return f"{self.reply_code} {self.reply_text}"


class ChannelError(AMQPError):
    """Soft error: close ``channel`` only; the connection stays usable."""

    def __init__(
        self,
        channel: int,
        reply_code: int,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        super().__init__(reply_code, reply_text, class_id, method_id)
        self.channel = channel

    def __str__(self) -> str:
        return f"channel {self.channel}: {super().__str__()}"


class AMQPConnectionError(AMQPError):
    """Hard error: send connection.close with these values, then close the socket.

    ``framing_lost`` is True when the byte stream can no longer be parsed (bad
    frame-end, oversized or unknown frame): nothing more will be read, so do not
    wait for the client's close-ok."""

    def __init__(
        self,
        reply_code: int,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
        *,
        framing_lost: bool = False,
    ) -> None:
        super().__init__(reply_code, reply_text, class_id, method_id)
        self.framing_lost = framing_lost


class BadProtocolHeader(Exception):
    """The peer did not open with ``AMQP\\x00\\x00\\x09\\x01``. Write ``reply``
    (the version we speak) and close the socket, as the spec requires."""

    reply = PROTOCOL_HEADER

    def __init__(self, received: bytes) -> None:
        super().__init__(f"bad protocol header {received!r}")
        self.received = received
