"""``raftmq cluster …``: status, add and remove, over a node's HTTP API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:15692"


def _request(url: str, method: str = "GET", timeout: float = 15.0) -> Any:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            raise SystemExit(f"raftmq: {url}: HTTP {e.code} {body.decode(errors='replace')}") from e
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"raftmq: cannot reach {url}: {e}") from e


def admin_url(arg: str | None) -> str:
    url = arg or os.environ.get("RAFTMQ_ADMIN_URL") or DEFAULT_URL
    return url if "://" in url else "http://" + url


def status(url: str) -> int:
    """Print every member's view: role, term, commit and applied index, lag."""
    first = _request(f"{url}/api/status", timeout=5)
    views: dict[str, dict[str, Any] | None] = {first["raft_address"]: first}
    for info in first["nodes"].values():
        addr, http = info.get("raft_address"), info.get("http_address")
        if addr and addr not in views:
            try:
                views[addr] = _request(f"http://{http}/api/status", timeout=2) if http else None
            except SystemExit:
                views[addr] = None
    for addr in first["raft"]["members"]:
        views.setdefault(addr, None)
    leader = first["raft"]["leader"]
    commit = max((v["raft"]["commit_index"] for v in views.values() if v), default=0)
    print(f"leader: {leader or '(none)'}   term: {first['raft']['term']}   "
          f"members: {len(first['raft']['members'])}")
    header = f"{'member':<22} {'node':<10} {'role':<10} {'term':>5} {'commit':>9} {'applied':>9} {'lag':>6}  state"
    print(header)
    print("-" * len(header))
    for addr in sorted(views):
        v = views[addr]
        member = addr in first["raft"]["members"]
        if v is None:
            node = next((n for n, i in first["nodes"].items() if i.get("raft_address") == addr), "?")
            print(f"{addr:<22} {node:<10} {'unreachable':<10} {'':>5} {'':>9} {'':>9} {'':>6}  "
                  f"{'member' if member else 'not a member'}")
            continue
        r = v["raft"]
        flags = [s for s, on in (("isolated", v["isolated"]), ("not ready", not v["ready"]),
                                 ("not a member", not member)) if on]
        print(f"{addr:<22} {v['node']:<10} {r['state']:<10} {r['term']:>5} {r['commit_index']:>9} "
              f"{r['last_applied']:>9} {commit - r['last_applied']:>6}  {', '.join(flags) or 'ok'}")
    return 0


def change(url: str, method: str, address: str) -> int:
    """Send the change to the leader (only a leader can step down for its own removal)."""
    view = _request(f"{url}/api/status", timeout=5)
    leader = view["raft"]["leader"]
    for info in view["nodes"].values():
        if leader and info.get("raft_address") == leader and info.get("http_address"):
            url = "http://" + info["http_address"]
    result = _request(f"{url}/api/members?address={address}", method=method)
    verb = "added" if method == "POST" else "removed"
    if result.get("ok"):
        print(f"{address} {verb}")
        return 0
    print(f"raftmq: {address} not {verb}: {result.get('error')}")
    return 1
