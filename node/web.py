"""The node's HTTP servers, on aiohttp and the node's event loop (no thread touches state).

* **Prometheus port** (``--metrics-port``, 15692): ``GET /metrics``, ``/healthz``
  (readiness: up, sees a leader and a quorum, not isolated) and ``/livez``. Open:
  they change nothing, and Prometheus and Kubernetes probes must reach them.
* **Management port** (``--management-port``, 15672): the authenticated API under
  ``/api`` (node/management.py), RabbitMQ's paths and JSON.

aiohttp was chosen over the hand-written HTTP/1.0 handler it replaces: a maintained
server with request-size limits, keep-alive, routing and JSON, on the same loop.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from node import management
from node.auth import RateLimitedLog

if TYPE_CHECKING:
    from node.broker import Broker

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
        from node.metrics import DETAILED_FAMILIES, detailed

        families = set(request.query.getall("family", []))
        unknown = families - set(DETAILED_FAMILIES)
        if unknown:
            return web.Response(status=400, text=f"unknown families {sorted(unknown)}; "
                                f"known: {', '.join(DETAILED_FAMILIES)}\n")
        body = detailed(broker.metrics.source, families,
                        set(request.query.getall("vhost", [])))
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    @routes.get("/metrics/per-object")
    async def metrics_per_object(request: web.Request) -> web.Response:
        from node.metrics import DETAILED_FAMILIES, detailed

        body = broker.metrics.render() + detailed(broker.metrics.source,
                                                  set(DETAILED_FAMILIES), set())
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
                ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    server_log = logging.getLogger("aiohttp.server")
    if _client_errors not in server_log.filters:
        server_log.addFilter(_client_errors)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           max_line_size=MAX_LINE, max_field_size=MAX_LINE)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    await site.start()
    return runner


async def serve(broker: Broker) -> list[web.AppRunner]:
    """Start the configured servers; returns their runners (``cleanup()`` to stop)."""
    cfg = broker.cfg
    runners = []
    if cfg.metrics_port:
        runners.append(await start(metrics_app(broker), cfg.metrics_host, cfg.metrics_port))
        log.info("Prometheus metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)
    if cfg.management_port:
        app = management.app(broker, client_max_size=MAX_BODY)
        runners.append(await start(app, cfg.management_host, cfg.management_port))
        log.info("management API on http://%s:%d/api", cfg.management_host,
                 cfg.management_port)
    return runners
