"""The node's HTTP servers, on aiohttp and the node's event loop (no thread touches state).

* **Prometheus port** (``--metrics-port``, 15692): ``GET /metrics``, ``/healthz``
  (readiness: up, sees a leader and a quorum, not isolated) and ``/livez``. Open:
  they change nothing, and Prometheus and Kubernetes probes must reach them.
* **Management port** (``--management-port``, 15672): the authenticated API under
  ``/api`` (node/mgmt/), RabbitMQ's paths and JSON; over HTTPS on
  ``--management-tls-port`` (15671) with ``--management-tls-cert`` / ``-key`` (RabbitMQ's
  management.ssl.*), the same app on both ports or on that one alone.

aiohttp was chosen over the hand-written HTTP/1.0 handler it replaces: a maintained
server with request-size limits, keep-alive, routing and JSON, on the same loop.

Both ports are guarded the same way (:class:`Guard`, :class:`HttpLimits`), as a client
costs the node a socket and buffers whichever port it opens:

* a request's headers and body must arrive within ``request_timeout`` of its first byte
  (or of the connection's start): a half-open request is closed, its body too slow a
  408 (aiohttp has no header-read timeout of its own; its keep-alive timer only starts
  after a response). Bytes pipelined in the same read as the request before them are
  bounded by the keep-alive timeout instead (aiohttp's buffer is not visible here);
* an idle keep-alive connection is closed after ``keepalive_timeout``;
* at most ``max_connections`` connections per port: one more is closed at once;
* a body is read whole before the handler runs, so ``client_max_size`` bounds it on
  both ports (a handler that never read the body never applied the limit);
* a handler's unexpected exception is a 500 with a short JSON reason, logged once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from node.amqp.auth import RateLimitedLog
from node.config import tls_context
from node.mgmt import app as management

if TYPE_CHECKING:
    from node.broker import Broker
    from node.config import Config

log = logging.getLogger(__name__)

# Request line and each header: longer ones get 400 from aiohttp (its defaults are 8 KiB).
MAX_LINE = 8190
MAX_BODY = 16 << 20  # definitions imports can be large; anything else is small


class _ClientErrors(logging.Filter):
    """aiohttp logs a client's malformed request (an over-long line, a bad header) with a
    traceback, as if it were a server fault. Keep those to one rate-limited line: they are
    the client's problem, and a flood of them must not become a flood of log lines."""

    def __init__(self) -> None:
        super().__init__()
        self._log = RateLimitedLog(log)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        self._log.warning("bad HTTP request from %s refused with %s: %.160s", peer, exc.code,
                          exc.message)
        return False


_client_errors = _ClientErrors()


@dataclass(frozen=True)
class HttpLimits:
    request_timeout: float = 30.0  # headers and body of one request, from its first byte
    keepalive_timeout: float = 75.0  # an idle connection between requests
    max_connections: int = 1000  # open at once on one port (0: no limit)


class Guard:
    """The protocol factory of one port: counts its connections, refuses those beyond
    the limit and gives each a :class:`_Conn` keeping its request deadline. The request
    handlers come from aiohttp's ``Server`` (set once the runner is set up)."""

    def __init__(self, limits: HttpLimits, name: str) -> None:
        self.limits, self.name = limits, name
        self.server: web.Server | None = None
        self.conns: dict[RequestHandler, _Conn] = {}
        self.refused = 0  # connections beyond max_connections
        self.timed_out = 0  # requests not complete in time
        self._log = RateLimitedLog(log, per_second=2)

    def __call__(self) -> asyncio.Protocol:
        if 0 < self.limits.max_connections <= len(self.conns):
            self.refused += 1
            self._log.warning("%s: %d connections open, the most allowed: one more refused",
                              self.name, len(self.conns))
            return _Refused()
        assert self.server is not None, "Guard.server is set before the site starts"
        return _Conn(self, self.server())

    def expired(self, conn: _Conn) -> None:
        self.timed_out += 1
        self._log.warning("%s: a request from %s was not complete in %gs: connection "
                          "closed", self.name, conn.peer, self.limits.request_timeout)

    def middleware(self) -> Any:
        """Reads the request's body before the handler runs, by the request's deadline
        (408 past it); while the handler runs the deadline does not apply."""

        @web.middleware
        async def deadline(request: web.Request, handler: Any) -> web.StreamResponse:
            conn = self.conns.get(request.protocol)
            if conn is None:  # (not through this guard: a test's own server)
                return await handler(request)
            conn.busy = True  # the deadline is this middleware's now: it answers 408
            try:
                if request.can_read_body:
                    try:
                        async with asyncio.timeout_at(conn.deadline_at()):
                            await request.read()  # (kept by aiohttp for the handler)
                    except TimeoutError:
                        self.expired(conn)
                        response = web.json_response(
                            {"error": "request_timeout", "reason": "the request's body did "
                             f"not arrive within {self.limits.request_timeout:g}s"},
                            status=408)
                        await response.prepare(request)
                        await response.write_eof()
                        conn.close()  # (aiohttp would linger 10 s reading the rest)
                        return response
                conn.disarm()
                conn.handling = True
                return await handler(request)
            finally:
                conn.busy = False
                conn.handled()

        return deadline


class _Refused(asyncio.Protocol):
    """A connection beyond the limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Conn(asyncio.Protocol):
    """One connection: aiohttp's RequestHandler, with the request deadline. The deadline
    is armed when the connection is made, by the first byte that arrives while no
    request is being handled, and when a handler ends if bytes of a next (pipelined)
    request came while it ran; it is disarmed when a request's body is complete and its
    handler starts; if it passes first, the connection is closed."""

    def __init__(self, guard: Guard, inner: RequestHandler) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.busy = False  # the middleware has the request (its body, its handler)
        self.handling = False  # its handler runs (the body is complete)
        self.early = False  # bytes of a next request came while a handler ran
        self._deadline: asyncio.TimerHandle | None = None

    def deadline_at(self) -> float:
        """When the current request must be complete (loop time)."""
        if self._deadline is None:  # pipelined behind a request just handled
            self._arm()
        assert self._deadline is not None
        return self._deadline.when()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_at(loop.time() + self.guard.limits.request_timeout,
                                      self._expire)

    def handled(self) -> None:
        """A handler is done: bytes that came meanwhile start the next request's clock."""
        if self.handling and self.early and self._deadline is None:
            self._arm()
        self.handling = self.early = False

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def close(self) -> None:
        """Close the connection once what is written has been sent."""
        if self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        self._deadline = None
        if self.busy or self.transport is None or self.transport.is_closing():
            return
        self.guard.expired(self)
        self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        self.peer = transport.get_extra_info("peername")
        self.guard.conns[self.inner] = self
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handling:
            self.early = True
        elif not self.busy and self._deadline is None:
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # (aiohttp's answer: close the transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.guard.conns.pop(self.inner, None)
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Budget:
    """At most ``per_second`` tracebacks logged a second (one user repeating a request
    that hits a bug must not fill the disk: 400 tracebacks in 0.9 s were seen); how
    many were held back is said with the next one that is logged."""

    def __init__(self, per_second: int = 5) -> None:
        self.per_second, self.window, self.count, self.held = per_second, 0.0, 0, 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.held:
                log.error("%d more requests failed the same way (tracebacks not logged)",
                          self.held)
            self.window, self.count, self.held = now, 0, 0
        self.count += 1
        if self.count > self.per_second:
            self.held += 1
            return False
        return True


_tracebacks = _Budget()


@web.middleware
async def unexpected_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A handler's exception that is not an HTTP answer: 500 with a short reason, the
    traceback logged once (bad input is a 400 before it gets here; this is for bugs)."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except Exception as e:
        if _tracebacks.allow():
            log.exception("%s %s failed", request.method, request.path[:200])
        return web.json_response({"error": "internal_error",
                                  "reason": f"{type(e).__name__}: see the node's log"},
                                 status=500)


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site with the guard as the protocol factory."""

    __slots__ = ("_guard",)

    def __init__(self, runner: web.AppRunner, guard: Guard, host: str, port: int,
                 ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        self._guard = guard

    @property
    def guard(self) -> Guard:
        return self._guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        self._server = await asyncio.get_running_loop().create_server(
            self._guard, self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address)


def healthy(broker: Broker) -> bool:
    return (broker.ready and not broker.isolated and not broker.draining
            and broker.raft.leader is not None and broker.raft.has_quorum)


def metrics_app(broker: Broker) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=broker.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    @routes.get("/metrics/detailed")
    async def metrics_detailed(request: web.Request) -> web.Response:
        """rabbitmq_prometheus's per-queue endpoint: ?family=...&vhost=... (repeatable)."""
        from node.services.metrics import DETAILED_FAMILIES

        families = set(request.query.getall("family", []))
        unknown = families - set(DETAILED_FAMILIES)
        if unknown:
            return web.Response(status=400, text=f"unknown families {sorted(unknown)}; "
                                f"known: {', '.join(DETAILED_FAMILIES)}\n")
        body = broker.metrics.detailed(families, set(request.query.getall("vhost", [])))
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    @routes.get("/metrics/per-object")
    async def metrics_per_object(request: web.Request) -> web.Response:
        from node.services.metrics import DETAILED_FAMILIES

        body = broker.metrics.render() + broker.metrics.detailed(set(DETAILED_FAMILIES), set())
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        ok = healthy(broker)
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ready\n")

    @routes.get("/livez")
    async def livez(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=1 << 16)
    app.add_routes(routes)
    return app


async def start(app: web.Application, host: str, port: int,
                ssl_context: ssl.SSLContext | None = None,
                limits: HttpLimits = HttpLimits(),
                tls_site: tuple[str, int, ssl.SSLContext] | None = None,
                plain: bool = True) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` (``plain`` False: not there) and, with ``tls_site``
    (host, port, context), over HTTPS there too: each port behind its own :class:`Guard`
    (its site's ``guard``), the same app and handlers behind both."""
    server_log = logging.getLogger("aiohttp.server")
    if _client_errors not in server_log.filters:
        server_log.addFilter(_client_errors)
    sites = ([(host, port, ssl_context)] if plain else []) + ([tls_site] if tls_site else [])
    guards = [Guard(limits, f"HTTP{'S' if ctx else ''} port {p}") for _h, p, ctx in sites]
    # (a guard's middleware passes by the requests of another guard's port)
    app.middlewares[:0] = [unexpected_errors, *(g.middleware() for g in guards)]
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                           keepalive_timeout=limits.keepalive_timeout)
    await runner.setup()
    for guard, (h, p, ctx) in zip(guards, sites, strict=True):
        guard.server = runner.server
        await _GuardedSite(runner, guard, h, p, ctx).start()
    return runner


def limits(cfg: Config) -> HttpLimits:
    return HttpLimits(cfg.http_request_timeout, cfg.http_keepalive_timeout,
                      cfg.http_max_connections)


async def serve(broker: Broker) -> list[web.AppRunner]:
    """Start the configured servers; returns their runners (``cleanup()`` to stop)."""
    cfg = broker.cfg
    runners = []
    if cfg.metrics_port:
        runners.append(await start(metrics_app(broker), cfg.metrics_host, cfg.metrics_port,
                                   limits=limits(cfg)))
        log.info("Prometheus metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)
    tls = tls_context(cfg, "management_tls")
    tls_site = (cfg.management_host, cfg.management_tls_port, tls) \
        if tls is not None and cfg.management_tls_port else None
    if cfg.management_port or tls_site:
        app = management.app(broker, client_max_size=MAX_BODY)
        runners.append(await start(app, cfg.management_host, cfg.management_port,
                                   limits=limits(cfg), tls_site=tls_site,
                                   plain=bool(cfg.management_port)))
        if cfg.management_port:
            log.info("management API on http://%s:%d/api", cfg.management_host,
                     cfg.management_port)
        if tls_site:
            log.info("management API on https://%s:%d/api", cfg.management_host,
                     cfg.management_tls_port)
    return runners
