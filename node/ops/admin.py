"""``raftmq`` commands that talk to a node's management API (HTTP basic auth).

The node is ``--node`` (or ``$RAFTMQ_ADMIN_URL``, default http://127.0.0.1:15672); the
credentials ``--user`` / ``--password`` (or ``$RAFTMQ_ADMIN_USER`` /
``$RAFTMQ_ADMIN_PASSWORD``, default guest / guest, which works from loopback only).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:15672"


class AdminError(SystemExit):
    pass


@dataclass
class Api:
    url: str
    user: str
    password: str

    @classmethod
    def from_args(cls, node: str | None, user: str | None, password: str | None) -> Api:
        url = node or os.environ.get("RAFTMQ_ADMIN_URL") or DEFAULT_URL
        return cls(url if "://" in url else "http://" + url,
                   user or os.environ.get("RAFTMQ_ADMIN_USER") or "guest",
                   password or os.environ.get("RAFTMQ_ADMIN_PASSWORD") or "guest")

    def at(self, http_address: str) -> Api:
        return Api("http://" + http_address, self.user, self.password)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15.0,
                ok: tuple[int, ...] = (200, 201, 204),
                headers: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {})
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if e.code in ok:
                return answer
            if isinstance(answer, dict) and ("ok" in answer):
                return answer  # membership answers carry their own verdict
            reason = answer.get("reason") if isinstance(answer, dict) else raw.decode(
                errors="replace")
            raise AdminError(f"raftmq: {method} {path}: HTTP {e.code}: {reason}") from e
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"raftmq: cannot reach {self.url}: {e}") from e


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# --- cluster --------------------------------------------------------------------------------


def cluster_status(api: Api) -> int:
    """Print every member's view: role, term, commit and applied index, lag. A node that
    is not a member and does not answer (one removed, or left out by force-members) is
    named on one line below the table, not given a row: the cluster's node table keeps
    every node that ever joined (a removed member that still runs does get its row)."""
    first = api.request("GET", "/api/status", timeout=5)
    views: dict[str, dict[str, Any] | None] = {first["raft_address"]: first}
    for info in first["nodes"].values():
        addr, http = info.get("raft_address"), info.get("http_address")
        if addr and addr not in views:
            try:
                views[addr] = api.at(http).request("GET", "/api/status", timeout=2) \
                    if http else None
            except SystemExit:
                views[addr] = None
    for addr in first["raft"]["members"]:
        views.setdefault(addr, None)
    leader = first["raft"]["leader"]
    commit = max((v["raft"]["commit_index"] for v in views.values() if v), default=0)
    levels = first.get("levels") or {}  # (a node of a release before levels: none)
    announced = levels.get("members") or {}
    print(f"leader: {leader or '(none)'}   term: {first['raft']['term']}   "
          f"members: {len(first['raft']['members'])}   "
          f"command level: {levels.get('cluster', 1)}")
    header = (f"{'member':<22} {'node':<10} {'role':<10} {'term':>5} {'commit':>9} "
              f"{'applied':>9} {'lag':>6} {'level':>5}  state")
    print(header)
    print("-" * len(header))
    former = []
    for addr in sorted(views):
        v = views[addr]
        member = addr in first["raft"]["members"]
        if v is None and not member:
            former.append(next((f"{n} ({addr})" for n, i in first["nodes"].items()
                                if i.get("raft_address") == addr), addr))
            continue
        if v is None:
            node = next((n for n, i in first["nodes"].items() if i.get("raft_address") == addr),
                        "?")
            print(f"{addr:<22} {node:<10} {'unreachable':<10} {'':>5} {'':>9} {'':>9} {'':>6} "
                  f"{announced.get(addr, '-'):>5}  {'member' if member else 'not a member'}")
            continue
        r = v["raft"]
        draining = bool((first["nodes"].get(v["node"]) or {}).get("draining"))
        flags = [s for s, on in (("isolated", v["isolated"]), ("not ready", not v["ready"]),
                                 ("draining", draining), ("not a member", not member)) if on]
        level = (v.get("levels") or {}).get("node", 1)
        print(f"{addr:<22} {v['node']:<10} {r['state']:<10} {r['term']:>5} "
              f"{r['commit_index']:>9} {r['last_applied']:>9} {commit - r['last_applied']:>6}"
              f" {level:>5}  {', '.join(flags) or 'ok'}")
    if former:
        print(f"not members and not answering (removed or left out): {', '.join(former)}")
    return 0


def drain(api: Api) -> int:
    me = api.request("GET", "/api/whoami")  # fails early on bad credentials
    del me
    status = api.request("GET", "/api/status")
    result = api.request("POST", f"/api/nodes/{quote(status['node'])}/drain", timeout=60,
                         ok=(200, 409))
    print(f"node {status['node']} drained: {result['closed']} client connections closed, "
          f"leader {result['leader_after']}"
          + ("" if result["settled"] else " (some proposals were still in flight)"))
    return 0 if result["settled"] else 1


def transfer_leadership(api: Api, to: str | None) -> int:
    query = f"?to={quote(to)}" if to else ""
    result = api.request("POST", f"/api/cluster/transfer-leadership{query}", timeout=60,
                         ok=(200, 409))
    if not result.get("ok"):
        print(f"raftmq: leadership did not move: {result.get('error')}", file=sys.stderr)
        return 1
    print(f"leader: {result['leader']}")
    return 0


def cluster_change(api: Api, method: str, address: str, force: bool = False) -> int:
    """Send the change to the leader (only a leader can step down for its own removal)."""
    view = api.request("GET", "/api/status", timeout=5)
    leader = view["raft"]["leader"]
    for info in view["nodes"].values():
        if leader and info.get("raft_address") == leader and info.get("http_address"):
            api = api.at(info["http_address"])
    query = f"?address={quote(address)}" + ("&force=true" if force else "")
    result = api.request(method, "/api/members" + query)
    verb = "added" if method == "POST" else "removed"
    if result.get("ok"):
        print(f"{address} {verb}")
        return 0
    # the API's parameter is force=true; the command's flag is --force
    error = str(result.get("error")).replace("force=true", "--force")
    print(f"raftmq: {address} not {verb}: {error}")
    return 1


# --- users, vhosts, permissions --------------------------------------------------------------


def add_user(api: Api, name: str, password: str, tags: str) -> int:
    api.request("PUT", f"/api/users/{quote(name)}", {"password": password, "tags": tags})
    print(f"user {name} added" + (f" (tags: {tags})" if tags else ""))
    return 0


def change_password(api: Api, name: str, password: str) -> int:
    user = api.request("GET", f"/api/users/{quote(name)}")
    api.request("PUT", f"/api/users/{quote(name)}", {"password": password, "tags": user["tags"]})
    print(f"password of {name} changed")
    return 0


def set_user_tags(api: Api, name: str, tags: str) -> int:
    user = api.request("GET", f"/api/users/{quote(name)}")
    api.request("PUT", f"/api/users/{quote(name)}", {
        "password_hash": user["password_hash"], "hashing_algorithm": user["hashing_algorithm"],
        "tags": tags})
    print(f"tags of {name}: {tags or '(none)'}")
    return 0


def delete(api: Api, kind: str, name: str) -> int:
    path = {"user": "users", "vhost": "vhosts"}[kind]
    api.request("DELETE", f"/api/{path}/{quote(name)}")
    print(f"{kind} {name} deleted")
    return 0


def add_vhost(api: Api, name: str, description: str) -> int:
    api.request("PUT", f"/api/vhosts/{quote(name)}", {"description": description})
    print(f"vhost {name} added")
    return 0


def set_permissions(api: Api, user: str, vhost: str, configure: str, write: str,
                    read: str) -> int:
    api.request("PUT", f"/api/permissions/{quote(vhost)}/{quote(user)}",
                {"configure": configure, "write": write, "read": read})
    print(f"permissions of {user} in vhost {vhost}: configure {_typed(configure)} write "
          f"{_typed(write)} read {_typed(read)}")
    return 0


def clear_permissions(api: Api, user: str, vhost: str) -> int:
    api.request("DELETE", f"/api/permissions/{quote(vhost)}/{quote(user)}")
    print(f"permissions of {user} in vhost {vhost} cleared")
    return 0


def set_topic_permissions(api: Api, user: str, vhost: str, exchange: str, write: str,
                          read: str) -> int:
    api.request("PUT", f"/api/topic-permissions/{quote(vhost)}/{quote(user)}",
                {"exchange": exchange, "write": write, "read": read})
    print(f"topic permissions of {user} on {exchange} in vhost {vhost}: write "
          f"{_typed(write)} read {_typed(read)}")
    return 0


def _policies_path(kind: str) -> str:
    return "/api/policies" if kind == "policy" else "/api/operator-policies"


def set_policy(api: Api, kind: str, vhost: str, name: str, pattern: str, definition: str,
               priority: int, apply_to: str) -> int:
    """``kind`` policy or operator-policy, as rabbitmqctl set_policy takes one."""
    try:
        value = json.loads(definition)
    except ValueError as e:
        raise AdminError(f"raftmq: the definition is not JSON: {e}") from None
    api.request("PUT", f"{_policies_path(kind)}/{quote(vhost)}/{quote(name)}",
                {"pattern": pattern, "definition": value, "priority": priority,
                 "apply-to": apply_to})
    print(f"{kind} {name} in vhost {vhost}: {apply_to} matching {_typed(pattern)}, priority "
          f"{priority}: {json.dumps(value)}")
    return 0


def clear_policy(api: Api, kind: str, vhost: str, name: str) -> int:
    api.request("DELETE", f"{_policies_path(kind)}/{quote(vhost)}/{quote(name)}")
    print(f"{kind} {name} in vhost {vhost} cleared")
    return 0


def _typed(pattern: str) -> str:
    """A regex in quotes as the user typed it (repr() would double its backslashes)."""
    return f"'{pattern}'"


def set_node_limit(api: Api, name: str, value: str) -> int:
    """The memory watermark or disk free limit of the node the API address points at."""
    node = api.request("GET", "/api/status")["node"]
    key = name.replace("-", "_")
    res = api.request("PUT", f"/api/nodes/{quote(node)}/limits", {key: value})
    print(f"node {node}: {name} {_setting(name, value, res)}: memory "
          f"{_mib(res['mem_used'])} used of "
          f"{_mib(res['mem_limit'])}{' (ALARM)' if res['mem_alarm'] else ''}, disk "
          f"{_mib(res['disk_free'])} free, limit {_mib(res['disk_free_limit'])}"
          f"{' (ALARM)' if res['disk_free_alarm'] else ''}")
    return 0


def _setting(name: str, value: str, res: dict[str, Any]) -> str:
    """The value as set: a fraction (0.4, mem_relative:1.5) as typed, a size in MiB like
    every other size of the line (50MB typed is 47.7 MiB; both side by side read as a
    mistake)."""
    if name == "disk-free-limit":
        return value if value.strip().startswith("mem_relative:") else \
            _mib(res["disk_free_limit"])
    try:
        relative = 0 < float(value) <= 1
    except ValueError:
        relative = False
    return value if relative else _mib(res["mem_limit"])


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def set_limit(api: Api, kind: str, name: str, limit: str, value: int) -> int:
    path = "vhost-limits" if kind == "vhost" else "user-limits"
    if value < 0:
        api.request("DELETE", f"/api/{path}/{quote(name)}/{quote(limit)}")
    else:
        api.request("PUT", f"/api/{path}/{quote(name)}/{quote(limit)}", {"value": value})
    print(f"{kind} {name}: {limit} = {value if value >= 0 else 'no limit'}")
    return 0


def print_table(rows: list[dict[str, Any]], columns: list[str], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=1))
        return
    cells = [[_cell(_field(r, c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _field(row: dict[str, Any], column: str) -> Any:
    """A column may name a nested field: "queue.name"."""
    value: Any = row
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v)
    return "" if v is None else str(v)


LISTS: dict[str, tuple[str, list[str]]] = {
    "queues": ("/api/queues", ["vhost", "name", "type", "durable", "messages_ready",
                               "messages_unacknowledged", "consumers"]),
    "exchanges": ("/api/exchanges", ["vhost", "name", "type", "durable", "auto_delete",
                                     "internal"]),
    "bindings": ("/api/bindings", ["vhost", "source", "destination", "destination_type",
                                   "routing_key"]),
    "connections": ("/api/connections", ["name", "node", "user", "vhost", "peer_host",
                                         "peer_port", "channels"]),
    "channels": ("/api/channels", ["name", "user", "vhost", "consumer_count",
                                   "messages_unacknowledged", "prefetch_count"]),
    "consumers": ("/api/consumers", ["queue.vhost", "queue.name", "consumer_tag",
                                     "channel_details.name", "ack_required",
                                     "prefetch_count"]),
    "nodes": ("/api/nodes", ["name", "running", "raft.role", "raft.term",
                             "raft.commit_index", "mem_used", "mem_alarm",
                             "disk_free_alarm"]),
    "policies": ("/api/policies", ["vhost", "name", "pattern", "apply-to", "definition",
                                   "priority"]),
    "operator-policies": ("/api/operator-policies", ["vhost", "name", "pattern", "apply-to",
                                                     "definition", "priority"]),
    "users": ("/api/users", ["name", "tags"]),
    "vhosts": ("/api/vhosts", ["name", "description", "messages"]),
    "permissions": ("/api/permissions", ["user", "vhost", "configure", "write", "read"]),
    "topic-permissions": ("/api/topic-permissions", ["user", "vhost", "exchange", "write",
                                                     "read"]),
}


_PER_VHOST = {"queues", "exchanges", "bindings", "connections", "consumers", "policies",
              "operator-policies"}


def list_items(api: Api, what: str, fmt: str, vhost: str | None = None) -> int:
    path, columns = LISTS[what]
    if vhost is not None:
        if what not in _PER_VHOST:
            raise AdminError(f"raftmq: list {what} takes no --vhost")
        path = (f"/api/vhosts/{quote(vhost)}/connections" if what == "connections"
                else f"{path}/{quote(vhost)}")
    print_table(api.request("GET", path), columns, fmt)
    return 0


def delete_queue(api: Api, vhost: str, name: str, if_unused: bool, if_empty: bool) -> int:
    query = "&".join(q for q, on in (("if-unused=true", if_unused), ("if-empty=true", if_empty))
                     if on)
    api.request("DELETE", f"/api/queues/{quote(vhost)}/{quote(name)}" +
                (f"?{query}" if query else ""))
    print(f"queue {name} deleted")
    return 0


def purge_queue(api: Api, vhost: str, name: str) -> int:
    api.request("DELETE", f"/api/queues/{quote(vhost)}/{quote(name)}/contents")
    print(f"queue {name} purged")
    return 0


def close_connection(api: Api, name: str, reason: str) -> int:
    api.request("DELETE", f"/api/connections/{quote(name)}", headers={"X-Reason": reason})
    print(f"connection {name} closed")
    return 0


SECTIONS = ("users", "vhosts", "permissions", "topic_permissions", "policies", "exchanges",
            "queues", "bindings")


def export_definitions(api: Api, file: str) -> int:
    defs = api.request("GET", "/api/definitions")
    text = json.dumps(defs, indent=2) + "\n"
    if file == "-":
        sys.stdout.write(text)
    else:
        with open(file, "w") as f:
            f.write(text)
        print(f"exported {_counts(defs)} to {file}", file=sys.stderr)
    return 0


def import_definitions(api: Api, file: str) -> int:
    """Sent in parts (users, vhosts and permissions first, then the topology of one vhost
    at a time, in chunks), with progress, so a large file is neither one huge request nor
    silent."""
    try:
        if file == "-":
            defs = json.load(sys.stdin)
        else:
            with open(file) as f:
                defs = json.load(f)
    except (OSError, ValueError) as e:
        raise AdminError(f"raftmq: cannot read definitions from {file}: {e}") from e
    if not isinstance(defs, dict):
        raise AdminError("raftmq: a definitions file is a JSON object")
    head = {k: v for k, v in defs.items() if k not in ("exchanges", "queues", "bindings")}
    # shovels last: one that started before its queues were declared would declare them
    shovels = [p for p in head.get("parameters") or [] if isinstance(p, dict)
               and p.get("component") == "shovel"]
    if shovels:
        head["parameters"] = [p for p in head["parameters"] if p not in shovels]
    api.request("POST", "/api/definitions", head, timeout=60)
    total = sum(len(defs.get(k) or []) for k in ("exchanges", "queues", "bindings"))
    done = 0
    print(f"imported {_counts(head)}", file=sys.stderr)
    for section in ("exchanges", "queues", "bindings"):
        items = defs.get(section) or []
        for start in range(0, len(items), IMPORT_CHUNK):
            chunk = items[start:start + IMPORT_CHUNK]
            api.request("POST", "/api/definitions", {section: chunk}, timeout=120)
            done += len(chunk)
            print(f"\r{section}: {done}/{total} topology items", end="", file=sys.stderr,
                  flush=True)
    if total:
        print(file=sys.stderr)
    if shovels:
        api.request("POST", "/api/definitions", {"parameters": shovels}, timeout=60)
    print(f"imported {_counts(defs)} from {file}")
    return 0


IMPORT_CHUNK = 500


def _counts(defs: dict[str, Any]) -> str:
    return ", ".join(f"{len(defs.get(k) or [])} {k.replace('_', ' ')}" for k in SECTIONS
                     if defs.get(k))

# --- shovels (node/mgmt/shovels.py) -----------------------------------------------------------

SHOVEL_OPTIONS = (("src_uri", "src-uri"), ("src_queue", "src-queue"), ("dest_uri", "dest-uri"),
                  ("dest_queue", "dest-queue"), ("dest_exchange", "dest-exchange"),
                  ("dest_exchange_key", "dest-exchange-key"),
                  ("prefetch_count", "src-prefetch-count"), ("ack_mode", "ack-mode"),
                  ("reconnect_delay", "reconnect-delay"), ("delete_after", "src-delete-after"))


def shovel(api: Api, action: str, vhost: str | None, options: dict[str, Any]) -> int:
    """``raftmq shovel list / declare / delete / restart``."""
    if action == "list":
        path = "/api/shovels" + (f"/{quote(vhost)}" if vhost is not None else "")
        print_table(api.request("GET", path),
                    ["vhost", "name", "state", "node", "messages_moved", "src_uri", "src_queue",
                     "dest_uri", "dest_queue", "dest_exchange", "reason"], options["format"])
        return 0
    vhost = "/" if vhost is None else vhost
    path = f"/api/parameters/shovel/{quote(vhost)}/{quote(options['name'])}"
    if action == "declare":
        value: dict[str, Any] = {key: options[opt] for opt, key in SHOVEL_OPTIONS
                                 if options.get(opt) is not None}
        after = value.get("src-delete-after")
        if isinstance(after, str) and after.isdigit():
            value["src-delete-after"] = int(after)
        api.request("PUT", path, {"value": value})
        print(f"shovel {options['name']} declared in vhost {vhost}")
    elif action == "delete":
        api.request("DELETE", path)
        print(f"shovel {options['name']} deleted from vhost {vhost}")
    else:
        api.request("DELETE", f"/api/shovels/vhost/{quote(vhost)}/{quote(options['name'])}"
                    "/restart")
        print(f"shovel {options['name']} restarting")
    return 0
