"""The management API's framework: what every resource module of node/mgmt/ builds on, and
the only module of the package they import (besides the pure ones: views, listing, input,
rates).

* **The node** is seen through :class:`Node`, a Protocol of what the API uses of it
  (node/broker.py's Broker satisfies it; the tests use the in-process node).
* **Answers**: a handler returns its response, or raises :class:`Refusal` with RabbitMQ's
  error body (:func:`error`; :func:`bad_request`, :func:`not_found`, :func:`unauthorised`
  for the usual ones). :func:`needs` answers a Refusal, so no handler catches one.
* **Authentication**: every request with HTTP basic auth against the replicated user table
  (the same users, hashes and login throttle as AMQP). RabbitMQ's tags decide what a user
  may do: ``management`` (its own view), ``monitoring`` (everything, read-only),
  ``administrator`` (everything, including every change); refusals are RabbitMQ's ``401
  not_authorised`` (``not_authorized`` for refused credentials, as RabbitMQ spells it; an
  empty password or user name is refused, node/amqp/login.py).
* **Input**: :func:`body` (the JSON object, node/mgmt/input.py's rules) and :func:`checked`
  (a value checked, an InputError answered as 400): bad input is a 400 with a reason,
  never a 201/204 for something not done and never a 500.
* **Changes** are Raft commands: :func:`submit` proposes them and returns once they are
  applied (503 when the cluster cannot commit them in time). Changes to queues, exchanges
  and bindings run as AMQP commands on the request's own connection, :class:`ApiSession`,
  so the machine checks them (and the user's permissions) as it checks a client's.
* **Listings**: :func:`listing` filters, sorts, pages and encodes, off the loop when big.
* **Other nodes**: :func:`forward` asks a member's management API, with the request's
  credentials (the one place the API makes HTTP requests).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import importlib.metadata
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import ClientSession, ClientTimeout, web

from cluster import commands as C
from cluster import effects as E
from node.amqp.login import Accepted, Attempt, Refused, is_loopback
from node.mgmt import listing as L
from node.mgmt.input import InputError, parse_json

if TYPE_CHECKING:
    from cluster.proposer import Proposer
    from cluster.replica import Replica
    from node.amqp.connection import AMQPConnection
    from node.amqp.login import Authenticator
    from node.config import Config
    from node.mgmt.rates import Rates
    from node.services.alarms import Alarms

REALM = 'Basic realm="RabbitMQ Management"'
APPLY_TIMEOUT_S = 10.0
MAX_TEXT_BYTES = 65535  # a description, a password
MAX_REQUEST_BYTES = 4 << 20  # a request's JSON body, but for a definitions import

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- the node --------------------------------------------------------------------------


class Node(Protocol):
    """What the management API uses of the node it serves (node/broker.py's Broker)."""

    cfg: Config
    node_id: str
    incarnation: int
    ready: bool
    isolated: bool
    draining: bool  # node/services/maintenance.py: out of service until it restarts
    raft: Replica  # the replicated state, Raft status, leadership, membership changes
    proposer: Proposer  # (which commands of a turn were left out: propose_and_wait)
    auth: Authenticator
    alarms: Alarms
    metrics: Any  # node/services/metrics.py's counters (connections and channels opened)
    connections: dict[int, AMQPConnection]  # this node's client connections, by number
    api_sessions: dict[int, ApiSession]  # the API's own connections, by number

    def new_conn_no(self) -> int: ...

    def propose(self, cmd: C.Command) -> None: ...

    def after_apply(self, fn: Callable[[], None]) -> None: ...

    def wake(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Maintenance:
    """The node's maintenance operations (node/services/maintenance.py), bound to it where the app
    is assembled (node/mgmt/app.py)."""

    drain: Callable[[], Awaitable[Any]]  # -> a DrainResult
    # (to: a Raft address or None, timeout or None for the default) -> the new leader's
    # Raft address, or None when no other node took over in time
    transfer: Callable[[str | None, float | None], Awaitable[str | None]]


NODE = web.AppKey("node", Node)
RATES: web.AppKey[Rates] = web.AppKey("rates")
MAINTENANCE = web.AppKey("maintenance", Maintenance)


def node_of(request: web.Request) -> Node:
    return request.app[NODE]


def state(request: web.Request) -> Any:
    """The replicated state (cluster/machine/state.py State) as this node has applied it."""
    return request.app[NODE].raft.state


def rates(request: web.Request) -> Rates:
    return request.app[RATES]


def maintenance(request: web.Request) -> Maintenance:
    return request.app[MAINTENANCE]


def product_version() -> str:
    try:
        return importlib.metadata.version("raftmq")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


# --- answers ---------------------------------------------------------------------------


def error(status: int, kind: str, reason: str, **headers: str) -> web.Response:
    """RabbitMQ's error body: {"error": kind, "reason": reason}."""
    return web.json_response({"error": kind, "reason": reason}, status=status,
                             headers=headers or None)


class Refusal(Exception):
    """The request's answer is ``response`` (an error): raised by a handler or anything
    it calls, answered by :func:`needs`."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def bad_request(reason: str) -> Refusal:
    return Refusal(error(400, "bad_request", reason))


def not_found(reason: str = "Not Found") -> Refusal:
    return Refusal(error(404, "Object Not Found", reason))


def unauthorised(reason: str, **headers: str) -> Refusal:
    return Refusal(error(401, "not_authorised", reason, **headers))


def login_failed(**headers: str) -> Refusal:
    """Credentials refused: RabbitMQ spells this one's error ``not_authorized``."""
    return Refusal(error(401, "not_authorized", "Login failed", **headers))


def unavailable(reason: str, kind: str = "unavailable") -> Refusal:
    return Refusal(error(503, kind, reason))


def no_content() -> web.Response:
    return web.Response(status=204)


def created_or_updated(existed: bool) -> web.Response:
    return web.Response(status=204 if existed else 201)


# --- authentication ----------------------------------------------------------------------


async def authenticate(request: web.Request) -> tuple[str, tuple[str, ...]]:
    """(user, tags) of the request's basic credentials; raises a 401 refusal."""
    header = request.headers.get("Authorization", "")
    # No challenge for the dashboard's own requests: a browser would answer it with its
    # login prompt instead of letting the page show its form.
    challenge = {} if request.headers.get("X-Requested-With") == "XMLHttpRequest" else \
        {"WWW-Authenticate": REALM}
    if not header.startswith("Basic "):
        raise unauthorised("Not_Authorized", **challenge)
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise login_failed() from None
    node = node_of(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    auth = node.auth
    step: Attempt | Accepted | Refused = auth.start(peer, "PLAIN",
                                                    f"\0{user}\0{password}".encode())
    if isinstance(step, Attempt):
        if step.wait > 0:
            await asyncio.sleep(step.wait)
        step = auth.check(step, peer)
    if isinstance(step, Refused):
        if step.delay > 0:
            await asyncio.sleep(step.delay)
        raise login_failed(**challenge)
    assert isinstance(step, Accepted)
    if step.user in node.cfg.loopback_users and not is_loopback(peer):
        raise login_failed()
    record = node.raft.state.users.get(step.user)
    return step.user, tuple(record.tags) if record is not None else ()


def needs(tag: str) -> Callable[[Handler], Handler]:
    """The request's user must have ``tag`` (administrator implies every tag,
    monitoring implies management). A Refusal raised by the handler is its answer."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                user, tags = await authenticate(request)
                if not has(tags, tag):
                    return error(401, "not_authorised", f"Not {tag} user")
                request["user"], request["tags"] = user, tags
                return await handler(request)
            except Refusal as r:
                return r.response

        return run

    return wrap


def has(tags: Iterable[str], tag: str) -> bool:
    """Whether a user with ``tags`` has ``tag``'s rights."""
    tags = tuple(tags)
    if "administrator" in tags:
        return True
    if tag == "management":
        return bool({"management", "monitoring", "policymaker"} & set(tags))
    return tag in tags


# --- input -------------------------------------------------------------------------------


async def body(request: web.Request, max_bytes: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """The request's JSON object (node/mgmt/input.py's rules: no NaN, bounded depth), of at
    most ``max_bytes`` (parsing costs the loop ~50 ms a MiB: a large body only where a
    large document is expected, a definitions import)."""
    if not request.body_exists:  # (node/services/web.py has read it already: can_read_body is False)
        return {}
    raw = await request.read()
    if len(raw) > max_bytes:
        raise Refusal(error(413, "bad_request", f"the request body is larger than "
                                                f"{max_bytes} bytes"))
    try:
        data = parse_json(raw)
    except InputError as e:
        raise bad_request(str(e)) from None
    if not isinstance(data, dict):
        raise bad_request("a JSON object is required")
    return data


def checked(check: Callable[..., Any], value: Any, *args: Any) -> Any:
    """``check(value, *args)`` (node/mgmt/input.py), an InputError from it answered as 400."""
    try:
        return check(value, *args)
    except InputError as e:
        raise bad_request(str(e)) from None


def flag(request: web.Request, name: str) -> bool:
    """A query flag: ``?name=true``."""
    return request.query.get(name, "false").lower() == "true"


# --- changes -----------------------------------------------------------------------------


async def submit(request: web.Request, *cmds: C.Command) -> None:
    """Propose ``cmds`` in one Raft entry and wait until it is applied."""
    await propose_and_wait(node_of(request), *cmds)


async def propose_and_wait(node: Node, *cmds: C.Command,
                           timeout: float = APPLY_TIMEOUT_S) -> None:
    """Propose ``cmds`` in this turn's Raft entry and wait until it is applied here.
    A command that cannot be encoded is refused (400) before anything is proposed; one
    the proposer left out all the same (cluster/proposer.py ``dropped``) is a 500 naming
    it, never a success; an entry not applied in ``timeout`` is a 503."""
    for cmd in cmds:
        try:
            C.check_encodable(cmd)
        except C.Unencodable as e:
            raise bad_request(str(e)) from None
    proposer = node.proposer
    turn = proposer.turn()
    done: asyncio.Future[tuple[C.Command, ...]] = asyncio.get_running_loop().create_future()

    def applied() -> None:
        if not done.done():
            done.set_result(proposer.dropped(turn))

    for cmd in cmds:
        node.propose(cmd)
    node.after_apply(applied)
    try:
        left_out = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise unavailable(f"the cluster did not commit the change in {timeout:g}s "
                          "(no quorum?)") from None
    lost = [type(c).__name__ for c in cmds if any(c is d for d in left_out)]
    if lost:
        raise Refusal(error(500, "internal_error", f"{', '.join(lost)} could not be "
                                                   "encoded and was not applied"))


PLACEHOLDER: C.ChKey = ("", 0, 0)  # replaced by the session's channel (ApiSession.step)


class ApiSession:
    """A connection of the API's own, opened, used and closed in one Raft entry: the
    commands run as ``user`` in ``vhost``; the effects addressed to it are collected (a
    stored message's bytes are read as it arrives, while the store still has them)."""

    def __init__(self, node: Node, user: str, vhost: str, system: bool = False) -> None:
        self.node = node
        self.conn_no = node.new_conn_no()
        self.key: C.ConnKey = (node.node_id, self.conn_no)
        self.ch: C.ChKey = (*self.key, 1)
        self.user, self.vhost, self.system = user, vhost, system
        self.effects: list[Any] = []
        # bytes of message bodies read at most (then a stored message's record is None)
        self.budget: int | None = None
        self.read_bytes = 0

    def take(self, ef: E.Effect) -> None:
        if isinstance(ef, E.Stored) and (self.budget is None or self.read_bytes < self.budget):
            rec = self.node.raft.read(ef.msg_id)
            self.read_bytes += len(rec[3])
            self.effects.append((ef, rec))
        else:
            self.effects.append((ef, None))

    async def run(self, *cmds: C.Command) -> list[tuple[Any, Any]]:
        """Run ``cmds`` (built with the channel key PLACEHOLDER) on this session, opened
        and closed in the same Raft entry."""
        try:
            await self.step(*cmds, opening=True, closing=True)
        finally:
            self.forget()
        return self.effects

    async def step(self, *cmds: C.Command, opening: bool = False,
                   closing: bool = False) -> list[tuple[Any, Any]]:
        """One Raft entry of this session's commands (opening or closing it too); the
        effects they had. A session over several entries (node/mgmt/objects.py
        ``get_messages``) must be closed whatever happens: :meth:`abandon`."""
        ours = [dataclasses.replace(c, ch=self.ch)  # type: ignore[type-var]
                if getattr(c, "ch", None) == PLACEHOLDER else c for c in cmds]
        head: list[C.Command] = [C.ConnectionOpen(self.key, self.vhost, self.user, self.system),
                                 C.ChannelOpen(self.ch)] if opening else []
        tail: list[C.Command] = [C.ConnectionClose(self.key)] if closing else []
        self.node.api_sessions[self.conn_no] = self
        before = len(self.effects)
        # (400 for a command that cannot be encoded, 503 when not committed in time)
        await propose_and_wait(self.node, *head, *ours, *tail)
        new = self.effects[before:]
        for ef, _ in new:
            if isinstance(ef, E.ChannelError | E.ConnectionError):
                raise Refusal(channel_refusal(ef.reply_code, ef.reply_text))
        return new

    def abandon(self) -> None:
        """Close the session without waiting (its unacked messages are requeued)."""
        self.forget()
        self.node.propose(C.ConnectionClose(self.key))

    def forget(self) -> None:
        """Effects for the session's connection go nowhere from now on."""
        self.node.api_sessions.pop(self.conn_no, None)


def channel_refusal(code: int, text: str) -> web.Response:
    """A channel error as RabbitMQ's management API answers it."""
    reason = text.split(" - ", 1)[1] if " - " in text else text
    if code == 403:  # RabbitMQ does not say more, whatever the cause
        return error(401, "not_authorised", "Access refused.")
    if code == 404:
        return not_found().response
    return error(400, "bad_request", reason)


async def run(request: web.Request, vhost: str, *cmds: C.Command) -> list[tuple[Any, Any]]:
    """``cmds`` on a session of the request's user in ``vhost`` (404 when there is none)."""
    if vhost not in state(request).vhosts:
        raise not_found()
    return await ApiSession(node_of(request), request["user"], vhost).run(*cmds)


# --- listings ----------------------------------------------------------------------------

# Listings are built in slices of at most SLICE_S with the event loop let run between
# them (a slice is timed, not counted: one connection's client properties can be 128 KiB);
# one that is long (more than INLINE_MAX items), took more than INLINE_S to build (its
# encoding will cost about as much), or has a regex filter is filtered, sorted, paged and
# encoded in this worker thread (RE2 lets go of the GIL while it matches, so the loop goes
# on serving clients meanwhile). One worker: what the listings of the management API cost
# in all is at most one core. At most PENDING_PER_USER of one user's listings wait for it
# or run there, and PENDING_MAX in all: past that a 503 (a flood of regex listings would
# queue minutes of work ahead of everyone else's).
SLICE_S = 0.005
INLINE_MAX, INLINE_S = 1000, 0.005
PENDING_PER_USER, PENDING_MAX = 2, 8
_LISTING_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgmt-listing")
_pending: dict[str, int] = {}


async def listing(request: web.Request, rows: Iterable[dict[str, Any]]) -> web.Response:
    """RabbitMQ's filters on list endpoints (node/mgmt/listing.py): ``name`` (with
    use_regex=true a regular expression), ``columns=a,b.c``, ``sort``/``sort_reverse``,
    ``page``/``page_size``. ``rows`` holds only what the user may see."""
    try:
        query = L.parse(request.query)
        match = L.matcher(query.name, query.use_regex) if query.name else None
    except L.QueryError as e:
        raise bad_request(str(e)) from None
    items, building = await gather(rows)
    try:
        if len(items) <= INLINE_MAX and building <= INLINE_S and not query.use_regex:
            return web.json_response(L.finish(items, query, match))
        text = await in_worker(request, _finish_json, items, query, match)
    except L.QueryError as e:
        raise bad_request(str(e)) from None
    return web.Response(text=text, content_type="application/json")


async def gather(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """``rows`` built in slices of SLICE_S with the loop let run between them; and how
    long building took."""
    items: list[dict[str, Any]] = []
    slice_start = time.perf_counter()
    building = 0.0
    for item in rows:
        items.append(item)
        now = time.perf_counter()
        if now - slice_start > SLICE_S:
            building += now - slice_start
            await asyncio.sleep(0)
            slice_start = time.perf_counter()
    building += time.perf_counter() - slice_start
    return items, building


async def in_worker(request: web.Request, fn: Callable[..., str], *args: Any) -> str:
    """``fn(*args)`` in the listing worker thread, bounded per user and in all (503)."""
    user = request.get("user", "")
    if _pending.get(user, 0) >= PENDING_PER_USER or sum(_pending.values()) >= PENDING_MAX:
        raise unavailable("too many listings are being prepared: try again shortly",
                          "service_unavailable")
    _pending[user] = _pending.get(user, 0) + 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_LISTING_POOL, fn, *args)
    finally:
        _pending[user] -= 1
        if not _pending[user]:
            del _pending[user]


def _finish_json(items: list[dict[str, Any]], query: L.Query, match: Any) -> str:
    return L.encode(L.finish(items, query, match))


# --- other nodes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What another node's management API answered."""

    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        return json.loads(self.body)

    def response(self) -> web.Response:
        """The same answer, to this request's client."""
        return web.Response(status=self.status, body=self.body,
                            content_type=self.content_type or "application/json")


class Unreachable(Exception):
    """The other node did not answer (connection refused, timeout, bad address)."""


async def forward(request: web.Request, address: str, path: str | None = None, *,
                  method: str | None = None, params: Mapping[str, str] | None = None,
                  timeout: float = APPLY_TIMEOUT_S) -> Answer:
    """Ask the management API at ``address`` (HOST:PORT) with the request's credentials
    (and its X-Reason): the same request, or ``method`` on ``path`` with ``params``.
    Raises :class:`Unreachable`; what the caller makes of that is its own answer."""
    url = f"http://{address}{request.rel_url if path is None else path}"
    headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-Reason")}
    try:
        async with ClientSession(timeout=ClientTimeout(total=timeout)) as s, \
                s.request(method or request.method, url, params=params, headers=headers) as r:
            return Answer(r.status, await r.read(), r.content_type)
    except (OSError, TimeoutError, ValueError) as e:
        raise Unreachable(str(e)) from None


async def forward_to(request: web.Request, node: str) -> web.Response:
    """The same request to ``node``'s management API (its address is in the state); 503
    when it has none or does not answer."""
    info = state(request).nodes.get(node)
    if info is None or not info.http_address or info.down:
        raise unavailable(f"node {node} is not reachable")
    try:
        return (await forward(request, info.http_address)).response()
    except Unreachable as e:
        raise unavailable(f"node {node}: {e}") from None
