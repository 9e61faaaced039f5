"""Serving AMQP 0-9-1 clients: one connection's socket, handshake, heartbeats and flow control
(``connection``, ``flow``), its channels without a socket (``session``), and logins (``login``,
``auth``, ``passwords``)."""
