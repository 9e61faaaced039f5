"""README.md as something to run: its fenced blocks by section, the commands of a shell block,
sample output matched against real output, and a shell that runs README commands one at a time.

Pure parsing and matching first (unit-tested in test_readme_parsing.py), then ``Shell``, which
runs each command in bash with the virtualenv's ``bin`` first on ``PATH`` (what the README's
``source .venv/bin/activate`` does) and carries exported variables from one command to the next,
as one interactive shell would."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"

_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: the heading it sits under, its language tag ('' for none), its text
    and the README line its first text line is on."""

    section: str
    lang: str
    text: str
    line: int


def blocks(readme: str) -> list[Block]:
    found: list[Block] = []
    section = ""
    lang: str | None = None
    body: list[str] = []
    start = 0
    for number, line in enumerate(readme.splitlines(), 1):
        if lang is None:
            if m := _FENCE.match(line):
                lang, body, start = m.group(1), [], number + 1
            elif h := _HEADING.match(line):
                section = h.group(2)
        elif line.rstrip() == "```":
            found.append(Block(section, lang, "\n".join(body), start))
            lang = None
        else:
            body.append(line)
    if lang is not None:
        raise ValueError(f"README: the block opened on line {start - 1} is never closed")
    return found


def block(readme: str, section: str, index: int = 0, lang: str | None = None) -> Block:
    """The ``index``-th block (of ``lang``, if given) under the heading ``section``."""
    mine = [b for b in blocks(readme) if b.section == section and (lang is None or b.lang == lang)]
    if index >= len(mine):
        raise LookupError(f"README: section {section!r} has {len(mine)} "
                          f"{lang or 'fenced'} block(s); wanted number {index + 1}")
    return mine[index]


def block_with(readme: str, section: str, fragment: str, lang: str | None = None) -> Block:
    """The first block under ``section`` whose text holds ``fragment``."""
    for b in blocks(readme):
        if b.section == section and fragment in b.text and (lang is None or b.lang == lang):
            return b
    raise LookupError(f"README: no {lang or 'fenced'} block with {fragment!r} under {section!r}")


def commands(text: str) -> list[str]:
    """The commands of a shell block: lines joined across trailing backslashes; blank and
    comment-only lines dropped (comments after a command stay: bash ignores them)."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole and not whole.startswith("#"):
            out.append(whole)
    if pending.strip():
        out.append(pending.strip())
    return out


def substitute(text: str, subs: dict[str, str]) -> str:
    """Replace placeholders (longest first, so ``n1:15672`` wins over ``n1``)."""
    for key in sorted(subs, key=len, reverse=True):
        text = text.replace(key, subs[key])
    return text


def _line_pattern(sample: str, variants: dict[str, str]) -> re.Pattern[str]:
    """A sample line as a regular expression: numbers stand for any number, runs of spaces for
    any run of spaces, runs of dashes for any run of dashes, '…' for anything; a word in
    ``variants`` for its regular expression (e.g. a Raft role)."""
    token = re.compile(r"(\d+|\s+|-{3,}|…|" +
                       "|".join(re.escape(w) for w in sorted(variants, key=len, reverse=True)) +
                       ")" if variants else r"(\d+|\s+|-{3,}|…)")
    parts: list[str] = []
    for i, piece in enumerate(token.split(sample.strip())):
        if i % 2 == 0:
            parts.append(re.escape(piece))
        elif piece.isdigit():
            parts.append(r"\d+")
        elif piece.isspace():
            parts.append(r"\s+")
        elif piece == "…":
            parts.append(".*")
        elif piece.startswith("---"):
            parts.append("-+")
        else:
            parts.append(variants[piece])
    # "… " after a space: the rest of the line, if any
    return re.compile("".join(parts).replace(r"\s+.*", r"(\s.*)?"))


def mismatches(sample: str, output: str, variants: dict[str, str] | None = None) -> list[str]:
    """How ``output`` differs from the README's ``sample``: line for line, each output line
    must match its sample line (see ``_line_pattern``); [] when it matches."""
    want = [ln for ln in sample.splitlines() if ln.strip()]
    got = [ln for ln in output.splitlines() if ln.strip()]
    problems = []
    if len(want) != len(got):
        problems.append(f"{len(got)} lines of output, the README shows {len(want)}")
    for n, (w, g) in enumerate(zip(want, got, strict=False), 1):
        if not _line_pattern(w, variants or {}).fullmatch(g.strip()):
            problems.append(f"line {n}: README {w.strip()!r}\n        output {g.strip()!r}")
    return problems


def clean_env() -> dict[str, str]:
    """The environment of a newcomer's shell: nothing of ours (make's variables, RAFTMQ_*)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("RAFTMQ_", "MAKE", "MFLAGS"))}


class CommandFailed(AssertionError):
    pass


class Shell:
    """Runs README commands one at a time in bash (``set -o pipefail``), from ``cwd``, with
    ``env`` and placeholders replaced by ``subs``. Variables a command exports are seen by the
    next ones."""

    def __init__(self, cwd: Path, env: dict[str, str], subs: dict[str, str],
                 timeout: float = 90) -> None:
        self.cwd = cwd
        self.env = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"}
        self.subs = subs
        self.timeout = timeout
        fd, name = tempfile.mkstemp(prefix="readme-env-")
        os.close(fd)
        self._exports = Path(name)
        self.ran: list[str] = []  # every command run, as written in the README

    def run(self, command: str, expect_ok: bool = True) -> str:
        """Run one README command; its stdout and stderr together. A non-zero exit fails
        (unless ``expect_ok`` is False) with the command and what it printed."""
        actual = substitute(command, self.subs)
        script = (f"source {self._exports}\nset -o pipefail\n{actual}\n"
                  f"rc=$?\nexport -p > {self._exports}\nexit $rc\n")
        self.ran.append(command)
        proc = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=self.timeout, stdin=subprocess.DEVNULL)
        if expect_ok and proc.returncode != 0:
            raise CommandFailed(f"README command failed (exit {proc.returncode}):\n  {command}\n"
                                f"ran as:\n  {actual}\nprinted:\n{proc.stdout}")
        return proc.stdout

    def close(self) -> None:
        self._exports.unlink(missing_ok=True)

    def run_block(self, text: str) -> str:
        return "".join(self.run(c) for c in commands(text))
