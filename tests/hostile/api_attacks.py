"""Tenant B against the management API (issue 19, items 2 and 4 to 8): pathological
regexes over its listings, enumeration of other tenants' connections, a spoofed
``user_id``, malformed input, half-open requests. Each returns an :class:`Outcome` whose
problems name every answer that is not what the issue demands."""

from __future__ import annotations

import socket
from urllib.parse import quote

from tests.hostile.target import (
    Answer,
    Outcome,
    Target,
    amqp,
    brief,
    queue_depth,
    request,
    wait_closed,
)

# (a+)+$ against "aaaa…a" + one other character backtracks 2^19 steps per name
EVIL = "(a%2B)%2B%24"
# against the built-in exchange names ("amq.rabbitmq.trace"): the same blow-up, shorter
EVIL_BUILTIN = "(.%2B)%2B%23"
REGEX_BOUND_S = 2.0  # one filtered listing, on a quiet node, is far below this
ENUMERATE = 300  # connection numbers tried per round


def evil_name(i: int) -> str:
    """20 characters, unique, the worst case for (a+)+$."""
    return "a" * 19 + chr(0x4E00 + i)


def regex_listings(t: Target) -> Outcome:
    """Item 2: user patterns over B's 300 queues and exchanges of 20 characters (made by
    :func:`tests.hostile.amqp_attacks.make_evil_names`), as b and as c (no permissions).
    Stops at the first listing over the bound: a stalled node does not need more proof."""
    out = Outcome("regex listings", "(a+)+$ and (.+)+# with use_regex=true over 300+300 "
                                    "names, 10 listings as b, 4 as c (no permissions)")
    m = t.management_port
    asks = [("b", f"/api/queues/B?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/exchanges/B?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/queues?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/exchanges?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/exchanges/B?name={EVIL_BUILTIN}&use_regex=true", (200, 400)),
            ("b", f"/api/bindings/B?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/consumers?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/channels?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/connections?name={EVIL}&use_regex=true", (200, 400)),
            ("b", f"/api/queues/B?name={EVIL}&use_regex=true&page=1&page_size=500",
             (200, 400)),
            ("c", f"/api/exchanges?name={EVIL_BUILTIN}&use_regex=true", (200, 400, 401)),
            ("c", f"/api/queues?name={EVIL}&use_regex=true", (200, 400, 401)),
            ("c", f"/api/queues/B?name={EVIL}&use_regex=true", (401, 404)),
            ("c", f"/api/exchanges/B?name={EVIL}&use_regex=true", (401, 404))]
    worst = 0.0
    for user, path, allowed in asks:
        got = request(m, "GET", path, user, timeout=90)
        worst = max(worst, got.seconds)
        out.expect(got.status in allowed, f"{user} {path}: {brief(got)}")
        if got.seconds > REGEX_BOUND_S:
            out.problems.append(f"{user} {path}: answered in {got.seconds:.1f} s (bound "
                                f"{REGEX_BOUND_S:g} s); the other listings not tried")
            break
    out.seen.append(f"slowest answer {worst:.2f} s")
    return out


def _shows_a(item: object) -> bool:
    if not isinstance(item, dict):
        return False
    queue = item.get("queue")
    return (item.get("vhost") == "A" or item.get("user") == "a"
            or (isinstance(queue, dict) and queue.get("vhost") == "A")
            or any(_shows_a(v) for v in item.values() if isinstance(v, dict)))


def _walk(t: Target, numbers: list[int], out: Outcome) -> tuple[list[str], int]:
    """GET every connection and channel name of ``numbers``: (paths showing A, answers
    200)."""
    leaked, seen200 = [], 0
    for i in numbers:
        for path in (f"/api/connections/{t.node}:{i}",
                     f"/api/channels/{quote(f'{t.node}:{i} (1)', safe='')}"):
            got = request(t.management_port, "GET", path, "b", timeout=30)
            if got.status == 200:
                seen200 += 1
                if _shows_a(got.json()):
                    leaked.append(path)
            elif got.status not in (401, 404):
                out.problems.append(f"{path}: {brief(got)}")
    return leaked, seen200


def _numbers(t: Target, count: int) -> list[int]:
    """The connection numbers to walk: ``count`` around the lowest open connection (A's,
    the oldest), and the last 20 up to just past the highest (b's own, the newest), so
    the walk is known to reach a name b may read: a sequential walk over the whole span
    between (API requests take numbers too) finds the same, only slower."""
    got = request(t.management_port, "GET", "/api/connections", "guest")
    names = [str(c.get("name", "")) for c in got.json()] if got.status == 200 else []
    numbers = [int(x.rpartition(":")[2]) for x in names if x.rpartition(":")[2].isdigit()]
    low, high = min(numbers, default=1), max(numbers, default=1)
    start = max(1, low - count // 2)
    return sorted(set(range(start, start + count)) | set(range(max(1, high - 10), high + 11)))


def enumeration(t: Target, a_connection: str | None) -> Outcome:
    """Item 4: b walks /api/connections/n1:1..N and /api/channels/..., reads every listing,
    and tries to close A's connection: nothing of A may come back, nothing of A closed."""
    n = ENUMERATE * t.scale
    out = Outcome("enumeration", f"{n} sequential /api/connections/{t.node}:i around A's "
                                 f"and 20 around b's own, /api/channels/{t.node}:i%20(1), "
                                 "8 listings, GET+DELETE of A's connection, as b")
    m = t.management_port
    with amqp(t, "b", "B"):  # a connection of b's own: the names it may read
        numbers = _numbers(t, n)
        leaked, seen200 = _walk(t, numbers, out)
    out.expect(not leaked, f"A's objects shown to b: {leaked[:5]} ({len(leaked)} in all)")
    for path in ("/api/connections", "/api/channels", "/api/consumers", "/api/queues",
                 "/api/exchanges", "/api/bindings", "/api/vhosts", "/api/users"):
        got = request(m, "GET", path, "b", timeout=30)
        if got.status == 200:
            items = got.json()
            shown = [i for i in items if _shows_a(i)] if isinstance(items, list) else []
            out.expect(not shown, f"{path} shows b {len(shown)} objects of A")
        else:
            out.expect(got.status == 401, f"{path}: {brief(got)}")
    if a_connection is not None:
        path = f"/api/connections/{quote(a_connection, safe='')}"
        got = request(m, "GET", path, "b")
        out.expect(got.status in (401, 404), f"GET A's connection as b: {brief(got)}")
        got = request(m, "DELETE", path, "b")
        out.expect(got.status in (401, 404), f"DELETE A's connection as b: {brief(got)}")
    out.expect(seen200 >= 1, "b's own connection never answered 200: the walk saw nothing")
    out.seen.append(f"{len(numbers)} numbers walked, {seen200} answers 200 (b's own), "
                    f"{len(leaked)} showing A (A is {a_connection})")
    return out


def user_id_spoof(t: Target) -> Outcome:
    """Item 5: publish through the API as b with user_id "a" (refused, nothing stored);
    b's own user_id is allowed, as over AMQP."""
    out = Outcome("user_id spoof", "POST /api/exchanges/B/amq.default/publish as b with "
                                   "user_id a, then with b")
    m = t.management_port
    request(m, "PUT", "/api/queues/B/b.spoof", "b", {"durable": False})
    request(m, "DELETE", "/api/queues/B/b.spoof/contents", "b")

    def publish(user_id: str) -> Answer:
        return request(m, "POST", "/api/exchanges/B/amq.default/publish", "b", {
            "routing_key": "b.spoof", "payload": "spoofed", "payload_encoding": "string",
            "properties": {"user_id": user_id}})

    spoof = publish("a")
    out.expect(400 <= spoof.status < 500, f"user_id a as b: {brief(spoof)} (4xx expected)")
    stored, _ = queue_depth(t, "B", "b.spoof")
    out.expect(stored == 0, f"{stored} messages with user_id a stored")
    own = publish("b")
    out.expect(own.status == 200, f"user_id b as b: {brief(own)} (200 expected)")
    out.seen.append(f"spoofed {spoof.status}, stored {stored}; own {own.status}")
    request(m, "DELETE", "/api/queues/B/b.spoof", "b")
    return out


def _nested(depth: int) -> bytes:
    return b'{"arguments": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


def malformed(t: Target) -> Outcome:
    """Items 6 and 8: every value checked before it is proposed (4xx with a reason, never
    500, never 201/204 for a queue that is not there), and every listing and the export
    stay valid JSON."""
    out = Outcome("malformed API input", ">64-bit int, NaN, Infinity, depth-100k JSON, "
                                         "sort= on objects, 1 MiB arguments, 300-byte "
                                         "names, b importing definitions")
    m = t.management_port
    big = 1 << 70
    cases: list[tuple[str, str, str, bytes]] = [
        (">64-bit int", "PUT", "b.bigint", b'{"arguments": {"x-max-length": %d}}' % big),
        (">64-bit int (own key)", "PUT", "b.bigint2", b'{"arguments": {"b-own": %d}}' % big),
        ("NaN", "PUT", "b.nan", b'{"arguments": {"x-max-length": NaN}}'),
        ("NaN (own key)", "PUT", "b.nan2", b'{"arguments": {"b-own": NaN}}'),
        ("Infinity", "PUT", "b.inf", b'{"arguments": {"x-message-ttl": Infinity}}'),
        ("-Infinity", "PUT", "b.ninf", b'{"arguments": {"x-expires": -Infinity}}'),
        ("depth 100k", "PUT", "b.nest", _nested(100_000)),
        ("1 MiB argument", "PUT", "b.huge1", b'{"arguments": {"x-y": "%s"}}' % (b"v" * (1 << 20))),
        ("10k arguments", "PUT", "b.huge2", b'{"arguments": {%s}}' % b", ".join(
            b'"k%d": "%s"' % (i, b"v" * 100) for i in range(10_000))),
        ("300-byte name", "PUT", "q" * 300, b'{"durable": true}'),
    ]
    for what, method, name, raw in cases:
        got = request(m, method, f"/api/queues/B/{quote(name, safe='')}", "b", raw=raw)
        if got.status in (200, 201, 204):
            there, _ = queue_depth(t, "B", name)
            out.expect(there >= 0, f"{what}: {got.status} and no queue")
            out.problems.append(f"{what}: accepted ({got.status}), 400 expected")
        else:
            out.expect(400 <= got.status < 500, f"{what}: {brief(got)}")
        out.seen.append(f"{what} {got.status}")
    for what, method, path, body in (
        ("300-byte exchange", "PUT", f"/api/exchanges/B/{'x' * 300}", {"type": "direct"}),
        ("300-byte routing key", "POST", "/api/exchanges/B/amq.default/publish",
         {"routing_key": "r" * 300, "payload": "x", "payload_encoding": "string",
          "properties": {}}),
        ("import as b", "POST", "/api/definitions",
         {"permissions": [{"user": "b", "vhost": "A", "configure": "(", "write": ".*",
                           "read": ".*"}],
          "queues": [{"name": f"b.imp{i}", "vhost": "B", "durable": True}
                     for i in range(1000 * t.scale)]}),
        ("permissions as b", "PUT", "/api/permissions/A/b",
         {"configure": ".*", "write": ".*", "read": ".*"}),
    ):
        got = request(m, method, path, "b", body)
        out.expect(400 <= got.status < 500, f"{what}: {brief(got)}")
        out.seen.append(f"{what} {got.status}")
    for sort in ("arguments", "message_stats", "arguments.x", "consumer_details"):
        got = request(m, "GET", f"/api/queues/B?sort={sort}", "b")
        out.expect(got.status in (200, 400), f"sort={sort}: {brief(got)}")
    for user, path in (("b", "/api/queues/B"), ("b", "/api/queues"), ("b", "/api/exchanges/B"),
                       ("guest", "/api/definitions"), ("guest", "/api/queues")):
        got = request(m, "GET", path, user)
        try:
            got.json()
        except ValueError as exc:
            out.problems.append(f"{path} as {user}: {got.status}, not JSON: {exc}")
    return out


def half_open(t: Target, sockets: int, wait_s: float) -> Outcome:
    """Item 7: requests whose headers never end, on both HTTP ports: each must be closed
    by the node within ``wait_s``."""
    out = Outcome("half-open HTTP", f"{sockets} requests without their last CRLF, half on "
                                    f"the management port, half on metrics; wait {wait_s:g} s")
    socks: list[tuple[str, socket.socket]] = []
    for i in range(sockets):
        port, name = ((t.management_port, "management") if i % 2 == 0
                      else (t.metrics_port, "metrics"))
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
            s.setblocking(False)
            socks.append((name, s))
        except OSError as exc:
            out.seen.append(f"connect to {name}: {exc}")
    left_open = set(wait_closed([s for _, s in socks], wait_s, poll_s=0.2))
    open_ = [(name, s) for name, s in socks if s in left_open]
    for name in ("management", "metrics"):
        left = sum(1 for n, _ in open_ if n == name)
        total = sum(1 for n, _ in socks if n == name)
        out.expect(left == 0, f"{left} of {total} on {name} still open after {wait_s:g} s")
        out.seen.append(f"{name}: {total - left}/{total} closed")
    for _, s in open_:
        s.close()
    return out
