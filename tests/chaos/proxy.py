"""The Raft link layer: one TCP proxy per directed link *i → j*, which the harness can cut.

Addressing (see README.md): node *j* is known to every member as ``nj:P_j`` (its Raft address, its
member id in pysyncobj) but binds its Raft listener on ``127.0.0.1:B_j`` (``--raft-bind``). Each
node *i* resolves the names ``nj`` through ``RAFTMQ_STATIC_HOSTS`` to its own loopback address
``127.88.i.j``, where the proxy for link *i → j* listens on port ``P_j`` and forwards to
``127.0.0.1:B_j``. So every connection node *i* dials to node *j* passes through the proxy of that
link, while every member still sees the same address string for *j*.

pysyncobj keeps one TCP connection per pair of members, dialled by the member with the greater
address; cutting a pair therefore means cutting both directed links (:class:`ProxyControl.cut`
does that when asked for a pair).

Two ways to cut a link:

* ``refuse``: close the link's connections and refuse new ones (a peer that is down, or a
  firewall that rejects): both sides notice at once;
* ``drop``: a black hole: existing connections stay open but every byte is discarded, new
  connections are accepted and never reach the other side; pysyncobj notices only through its
  own timeouts. Healing closes the black-holed connections (their streams lost bytes), so the
  nodes dial again.

The proxy runs in a process of its own (``python -m tests.chaos.proxy``) so that the clients'
event loop never delays Raft traffic. It reads its links as one JSON line on stdin, answers
``ready``, then takes one command per line and answers each with one line ``ok ...``:
``cut SRC DST MODE``, ``heal SRC DST``, ``delay SRC DST MS`` (latency on a link, 0 to
remove), ``heal_all`` (also removes delays), ``link SRC DST LHOST LPORT THOST TPORT`` (a new
link, for a node added to the cluster), ``stats``, ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MODES = ("refuse", "drop")
CONNECT_TIMEOUT_S = 2.0
READ_SIZE = 65536


# --------------------------------------------------------------------------- the proxy process


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: downstream (the dialling node) and upstream (the target)."""

    down: asyncio.StreamWriter
    up: asyncio.StreamWriter | None = None
    black_holed: bool = False

    def abort(self) -> None:
        for w in (self.down, self.up):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()


@dataclass(eq=False)
class _Link:
    src: str
    dst: str
    listen: tuple[str, int]
    target: tuple[str, int]
    mode: str = "open"  # open / refuse / drop
    delay: float = 0.0  # added latency, s, each direction (a slow link)
    pipes: set[_Pipe] = field(default_factory=set)
    accepted: int = 0
    refused: int = 0
    forwarded: int = 0  # bytes
    server: asyncio.AbstractServer | None = None

    async def serve(self) -> None:
        self.server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                                 reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            self.refused += 1
            writer.transport.abort()
            return
        pipe = _Pipe(writer, black_holed=self.mode == "drop")
        self.pipes.add(pipe)
        try:
            if pipe.black_holed:
                await self._discard(reader)
                return
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.target[0], self.target[1]), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                return
            pipe.up = up_w
            if self.mode != "open":  # cut while we were connecting
                pipe.black_holed = self.mode == "drop"
                if self.mode == "refuse":
                    return
            await asyncio.gather(self._pump(reader, up_w, pipe), self._pump(up_r, writer, pipe))
        finally:
            self.pipes.discard(pipe)
            pipe.abort()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(READ_SIZE):
                pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pipe: _Pipe) -> None:
        # Everything goes through a delay line (in order), so a link can be slowed at any time.
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(line, writer, pipe))
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if pipe.black_holed:
                    continue
                self.forwarded += len(data)
                line.put_nowait((loop.time() + self.delay, data))
        except Exception:  # noqa: BLE001 - any socket error ends the pipe
            pass
        finally:
            line.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender
            pipe.abort()  # one side gone: close both (no half-open Raft links)

    async def _send(self, line: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await line.get()) is not None:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if pipe.black_holed:
                    continue
                writer.write(data)
                await writer.drain()
        except Exception:  # noqa: BLE001 - the pipe is going away
            pipe.abort()

    def cut(self, mode: str) -> None:
        self.mode = mode
        for pipe in list(self.pipes):
            if mode == "refuse":
                pipe.abort()
            else:
                pipe.black_holed = True

    def heal(self) -> None:
        self.mode = "open"
        for pipe in list(self.pipes):
            if pipe.black_holed:
                pipe.abort()

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "conns": len(self.pipes), "accepted": self.accepted,
                "refused": self.refused, "bytes": self.forwarded}


async def _serve(config: dict[str, Any], stdin: IO[str], stdout: IO[str]) -> None:
    links = {(lk["src"], lk["dst"]): _Link(lk["src"], lk["dst"], tuple(lk["listen"]),
                                          tuple(lk["target"])) for lk in config["links"]}
    try:
        for link in links.values():
            await link.serve()
    except OSError as e:
        print(f"error {e}", file=stdout, flush=True)
        return
    print("ready", file=stdout, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:
            break
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        answer: Any = None
        if cmd == "cut" and len(args) == 3 and (args[0], args[1]) in links and args[2] in MODES:
            links[args[0], args[1]].cut(args[2])
        elif cmd == "heal" and len(args) == 2 and (args[0], args[1]) in links:
            links[args[0], args[1]].heal()
        elif cmd == "delay" and len(args) == 3 and (args[0], args[1]) in links:
            links[args[0], args[1]].delay = float(args[2]) / 1000.0
        elif cmd == "link" and len(args) == 6 and (args[0], args[1]) not in links:
            new = _Link(args[0], args[1], (args[2], int(args[3])), (args[4], int(args[5])))
            try:
                await new.serve()
            except OSError as e:
                print(f"error {e}", file=stdout, flush=True)
                continue
            links[args[0], args[1]] = new
        elif cmd == "heal_all":
            for link in links.values():
                link.heal()
                link.delay = 0.0
        elif cmd == "stats":
            answer = {f"{s}>{d}": lk.stats() for (s, d), lk in links.items()}
        elif cmd == "quit":
            print("ok", file=stdout, flush=True)
            break
        else:
            print(f"error bad command {line.strip()!r}", file=stdout, flush=True)
            continue
        print("ok" + ("" if answer is None else " " + json.dumps(answer)), file=stdout,
              flush=True)
    for link in links.values():
        link.heal()
        if link.server is not None:
            link.server.close()


def main() -> None:
    config = json.loads(sys.stdin.readline())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(config, sys.stdin, sys.stdout))


# --------------------------------------------------------------------------- the harness side


@dataclass(frozen=True)
class LinkSpec:
    src: str
    dst: str
    listen: tuple[str, int]
    target: tuple[str, int]


class ProxyError(RuntimeError):
    pass


class ProxyControl:
    """Start the proxy process for ``links`` and drive it: cut and heal links."""

    def __init__(self, links: list[LinkSpec], log_path: Path) -> None:
        self.links = links
        self.log_path = log_path
        self._lock = threading.Lock()
        self.cut_pairs: dict[frozenset[str], str] = {}
        self.slow_pairs: set[frozenset[str]] = set()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            cwd=Path(__file__).resolve().parents[2], start_new_session=True)
        assert self.proc.stdin is not None
        config = {"links": [{"src": lk.src, "dst": lk.dst, "listen": list(lk.listen),
                             "target": list(lk.target)} for lk in links]}
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()
        first = self._readline(timeout=15)
        if first != "ready":
            self.stop()
            raise ProxyError(f"proxy did not start: {first!r}")

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not out:
            raise ProxyError(f"proxy did not answer within {timeout}s (alive: "
                             f"{self.proc.poll() is None})")
        return out[0].strip()

    def command(self, line: str, timeout: float = 10.0) -> str:
        with self._lock:
            if self.proc.poll() is not None:
                raise ProxyError(f"proxy exited with {self.proc.returncode}")
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self._readline(timeout)
        if not answer.startswith("ok"):
            raise ProxyError(f"proxy: {line!r} -> {answer!r}")
        return answer[2:].strip()

    def cut(self, a: str, b: str, mode: str = "refuse") -> None:
        """Cut the pair a–b (both directed links)."""
        self.command(f"cut {a} {b} {mode}")
        self.command(f"cut {b} {a} {mode}")
        self.cut_pairs[frozenset((a, b))] = mode

    def add_links(self, links: list[LinkSpec]) -> None:
        """Start proxying ``links`` too (a node joined the cluster)."""
        for lk in links:
            self.command(f"link {lk.src} {lk.dst} {lk.listen[0]} {lk.listen[1]} "
                         f"{lk.target[0]} {lk.target[1]}")
            self.links.append(lk)

    def heal(self, a: str, b: str) -> None:
        self.command(f"heal {a} {b}")
        self.command(f"heal {b} {a}")
        self.cut_pairs.pop(frozenset((a, b)), None)

    def slow(self, a: str, b: str, seconds: float) -> None:
        """Add ``seconds`` of latency to the pair a–b, each direction (0: none)."""
        ms = int(seconds * 1000)
        self.command(f"delay {a} {b} {ms}")
        self.command(f"delay {b} {a} {ms}")
        if ms:
            self.slow_pairs.add(frozenset((a, b)))
        else:
            self.slow_pairs.discard(frozenset((a, b)))

    def heal_all(self) -> None:
        self.command("heal_all")
        self.cut_pairs.clear()
        self.slow_pairs.clear()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(self.command("stats"))
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.command("quit", timeout=3)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


if __name__ == "__main__":
    main()
