"""Rewriting a dead-lettered message's properties, at the wire level.

As RabbitMQ 3.10's rabbit_dead_letter: the ``x-death`` header (an array of
tables, most recent first) gets an entry for ``(queue, reason)``, or the existing
entry for that pair gets its count incremented and moves to the front; the first
death also adds ``x-first-death-reason`` / ``-queue`` / ``-exchange``; the
``expiration`` property is removed (recorded as ``original-expiration``) so the
message does not expire again where it lands; with a dead-letter routing key the
``CC`` header goes. Every other property and header is copied byte for byte.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

# Basic properties in flag order (bit 15 downwards): s = shortstr, t = table,
# o = octet, T = timestamp.
_KINDS = "sstoossssTssss"
_HEADERS, _EXPIRATION = 2, 7

_FIXED_SIZE = {ord(c): n for c, n in (("b", 1), ("B", 1), ("s", 2), ("u", 2), ("I", 4),
                                      ("i", 4), ("l", 8), ("L", 8), ("T", 8), ("f", 4),
                                      ("d", 8), ("t", 1), ("D", 5), ("V", 0))}
_INT_FORMATS = {ord("b"): ">b", ord("B"): ">B", ord("s"): ">h", ord("u"): ">H",
                ord("I"): ">i", ord("i"): ">I", ord("l"): ">q", ord("L"): ">Q"}

Entry = tuple[bytes, bytes]  # (key, raw value: type byte + payload)
Death = tuple[bytes | None, bytes | None]  # (queue, reason) of one x-death entry


def _value_end(data: bytes, pos: int) -> int:
    t = data[pos]
    pos += 1
    n = _FIXED_SIZE.get(t)
    if n is not None:
        return pos + n
    if t in (0x53, 0x78, 0x46, 0x41):  # 'S' longstr, 'x' bytes, 'F' table, 'A' array
        return pos + 4 + _U32.unpack_from(data, pos)[0]
    raise ValueError(f"bad field type {t}")


def parse_table(data: bytes, pos: int = 0) -> list[Entry]:
    """A field table (length-prefixed) as (key, raw value) pairs, in wire order."""
    (n,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + n
    if end > len(data):
        raise ValueError("truncated table")
    out = []
    while pos < end:
        klen = data[pos]
        key = bytes(data[pos + 1:pos + 1 + klen])
        pos += 1 + klen
        vend = _value_end(data, pos)
        out.append((key, bytes(data[pos:vend])))
        pos = vend
    return out


def _array_items(raw: bytes) -> list[bytes]:
    (n,) = _U32.unpack_from(raw, 1)
    pos, end = 5, 5 + n
    items = []
    while pos < end:
        vend = _value_end(raw, pos)
        items.append(raw[pos:vend])
        pos = vend
    return items


def encode_table(entries: list[Entry]) -> bytes:
    body = b"".join(bytes([len(k)]) + k + v for k, v in entries)
    return _U32.pack(len(body)) + body


def longstr(s: bytes) -> bytes:
    return b"S" + _U32.pack(len(s)) + s


def _array(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return b"A" + _U32.pack(len(body)) + body


def _str_of(raw: bytes | None) -> bytes | None:
    if raw is not None and raw[:1] == b"S":
        return raw[5:]
    return None


def _int_of(raw: bytes | None) -> int | None:
    if raw is None or not raw:
        return None
    fmt = _INT_FORMATS.get(raw[0])
    return struct.unpack_from(fmt, raw, 1)[0] if fmt is not None else None


def _get(entries: list[Entry], key: bytes) -> bytes | None:
    for k, v in entries:
        if k == key:
            return v
    return None


def _set(entries: list[Entry], key: bytes, value: bytes) -> None:
    """rabbit_misc:set_table_value: replace in place or append (sorted afterwards)."""
    for i, (k, _v) in enumerate(entries):
        if k == key:
            entries[i] = (key, value)
            return
    entries.append((key, value))


def split_properties(props: bytes) -> tuple[int, bytes, list[bytes | None]]:
    """(flags, continuation flag words, raw bytes of each of the 14 properties)."""
    flags = _U16.unpack_from(props, 0)[0]
    pos = 2
    word = flags
    while word & 1:
        word = _U16.unpack_from(props, pos)[0]
        pos += 2
    extra = props[2:pos]
    raw: list[bytes | None] = []
    for i, kind in enumerate(_KINDS):
        if not flags & (0x8000 >> i):
            raw.append(None)
            continue
        start = pos
        if kind == "s":
            pos += 1 + props[pos]
        elif kind == "t":
            pos += 4 + _U32.unpack_from(props, pos)[0]
        elif kind == "o":
            pos += 1
        else:
            pos += 8
        if pos > len(props):
            raise ValueError("truncated properties")
        raw.append(props[start:pos])
    return flags, extra, raw


def join_properties(flags: int, extra: bytes, raw: list[bytes | None]) -> bytes:
    flags &= 0x0003  # keep the reserved/continuation bits, recompute the rest
    parts = []
    for i, value in enumerate(raw):
        if value is not None:
            flags |= 0x8000 >> i
            parts.append(value)
    return _U16.pack(flags) + extra + b"".join(parts)


def record_death(props: bytes, reason: str, queue: str, exchange: str, routing_key: str,
                 now_s: int, drop_cc: bool) -> tuple[bytes, list[Death]]:
    """The properties of the dead-lettered copy, and its deaths (queue, reason) in
    x-death order (for cycle detection). Malformed properties are left as they are."""
    try:
        flags, extra, raw = split_properties(props)
        headers_raw = raw[_HEADERS]
        headers = parse_table(headers_raw) if headers_raw is not None else []
    except (IndexError, ValueError, struct.error):
        return props, [(queue.encode(), reason.encode())]
    q, r, x = queue.encode(), reason.encode(), exchange.encode()
    expiration = raw[_EXPIRATION]
    info: list[Entry] = [
        (b"reason", longstr(r)),
        (b"queue", longstr(q)),
        (b"time", b"T" + _U64.pack(max(now_s, 0))),
        (b"exchange", longstr(x)),
        (b"routing-keys", _array([longstr(routing_key.encode())])),
    ]
    if expiration is not None:
        info.append((b"original-expiration", longstr(expiration[1:])))
    deaths: list[Death]
    old = _get(headers, b"x-death")
    if old is None:
        _set(headers, b"x-first-death-reason", longstr(r))
        _set(headers, b"x-first-death-queue", longstr(q))
        _set(headers, b"x-first-death-exchange", longstr(x))
        _set(headers, b"x-death", _array([b"F" + encode_table([(b"count", b"l" + _I64.pack(1)),
                                                               *info])]))
        deaths = [(q, r)]
    elif old[:1] != b"A":
        # not an array (a client re-published it converted): reset it
        _set(headers, b"x-death", _array([b"F" + encode_table([(b"count", b"l" + _I64.pack(1)),
                                                               *info])]))
        deaths = [(q, r)]
    else:
        try:
            items = _array_items(old)
        except (IndexError, ValueError, struct.error):
            items = []
        match: list[Entry] | None = None
        others: list[bytes] = []
        other_deaths: list[Death] = []
        for item in items:
            table = _table_of(item)
            if table is None:
                others.append(item)
                other_deaths.append((None, None))
                continue
            dq, dr = _str_of(_get(table, b"queue")), _str_of(_get(table, b"reason"))
            if match is None and dq == q and dr == r:
                match = table
            else:
                others.append(item)
                other_deaths.append((dq, dr))
        if match is None:
            entry = [(b"count", b"l" + _I64.pack(1)), *info]
        else:  # the earlier entry, its count incremented (rabbit_dead_letter keeps its fields)
            count = _int_of(_get(match, b"count"))
            entry = list(match)
            _set(entry, b"count", b"l" + _I64.pack((count or 0) + 1))
        entry.sort(key=lambda kv: kv[0])
        _set(headers, b"x-death", _array([b"F" + encode_table(entry), *others]))
        deaths = [(q, r), *other_deaths]
    if drop_cc:
        headers = [(k, v) for k, v in headers if k != b"CC"]
    headers.sort(key=lambda kv: kv[0])  # rabbit_misc:set_table_value sorts the table
    raw[_HEADERS] = encode_table(headers)
    raw[_EXPIRATION] = None
    return join_properties(flags, extra, raw), deaths


def _table_of(item: bytes) -> list[Entry] | None:
    if item[:1] != b"F":
        return None
    try:
        return parse_table(item, 1)
    except (IndexError, ValueError, struct.error):
        return None


def is_cycle(queue: bytes, deaths: list[Death]) -> bool:
    """rabbit_dead_letter's is_cycle: the message has died in ``queue`` before, and
    no death since (including that one) was a rejection."""
    for dq, dr in deaths:
        if dq is None and dr is None:
            return False  # something a client put there: not "fully automatic"
        if dr == b"rejected":
            return False
        if dq == queue:
            return True
    return False
