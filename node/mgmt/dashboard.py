"""The web dashboard: static files (node/dashboard/) on the management port, at "/". The
page logs in with the same users as the API and reads and changes everything through
it; nothing here needs a build step or the internet."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

routes = web.RouteTableDef()

FILES = Path(__file__).resolve().parent.parent / "dashboard"  # node/dashboard/
TYPES = {"index.html": "text/html", "dashboard.js": "application/javascript",
         "dashboard.css": "text/css"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"}


def _file(name: str) -> web.Response:
    if name not in TYPES:
        raise web.HTTPNotFound()
    return web.Response(body=(FILES / name).read_bytes(), content_type=TYPES[name],
                        charset="utf-8", headers=HEADERS)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _file("index.html")


@routes.get("/dashboard/{name}")
async def asset(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])
