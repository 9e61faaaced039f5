"""Serving AMQP 0-9-1 clients. Without a socket: channel 0's handshake (``handshake``),
heartbeats and deadlines (``heartbeat``), every flow-control decision
(``flow``), a connection's channels (``session``), logins (``login``, ``auth``,
``passwords``). With the socket and the timers, carrying those out: ``connection``."""
