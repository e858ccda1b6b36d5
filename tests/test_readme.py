"""The README works as written: every shell command and Python block in it runs, in order, in
an empty folder, offline, with the installed ``audioclip`` on PATH.

Blocks are fenced ``bash`` or ``python``; ``text`` and ``bibtex`` blocks are shown, not run. An
HTML comment on the line before a block changes how it is run, visibly in the README source:

- ``<!-- readme-test: skip (installs packages) -->``: not run; allowed only for blocks that
  install packages (pip, venv), which a test must not do;
- ``<!-- readme-test: server URL -->``: a server that runs until stopped; it is started, must
  answer ``URL`` with status 200, and is then stopped as Ctrl-C would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUN = {"bash", "python"}
SHOWN = {"text", "bibtex"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>skip|server)\s+(?P<arg>.*?)\s*-->$")
BLOCK_TIMEOUT_S = 600
SERVER_START_S = 180


@dataclass
class Block:
    line: int          # 1-based line of the opening fence
    lang: str
    code: str
    marker: re.Match | None


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", marker))
        i += 1
    return blocks


def _environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # the venv's bin: its python and audioclip
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(HF_HUB_OFFLINE="1", AUDIOCLIP_OFFLINE="1", AUDIOCLIP_CACHE=str(tmp / "cache"),
               PYTHONUNBUFFERED="1")
    return env


def _command(block: Block, tmp: Path) -> list[str]:
    if block.lang == "python":
        script = tmp.parent / f"readme_line_{block.line}.py"  # beside the folder, not in it
        script.write_text(block.code)
        return [sys.executable, str(script)]
    return ["bash", "-e", "-o", "pipefail", "-c", block.code]


def _describe(block: Block, out: str) -> str:
    return f"README.md line {block.line} ({block.lang} block) failed:\n{block.code}\n--- output ---\n{out[-6000:]}"


def _port_free(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        try:
            s.bind((parts.hostname, parts.port or 80))
        except OSError:
            return False
    return True


def _run_server(block: Block, tmp: Path, env: dict[str, str]) -> str | None:
    """Start the block, wait for its URL to answer 200, stop it with SIGINT; None if it did,
    else the reason it failed."""
    url = block.marker.group("arg")
    if not _port_free(url):  # not the README's fault: say so, and go on with the next blocks
        warnings.warn(f"README.md line {block.line} not run: {url} is in use by another program")
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1
    proc = subprocess.Popen(_command(block, tmp), cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    answered, deadline = None, time.monotonic() + SERVER_START_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with opener.open(url, timeout=5) as response:
                    answered = response.status
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in the terminal
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out = proc.stdout.read()
        proc.stdout.close()
    if answered != 200:
        return _describe(block, f"{url} answered {answered!r}\n{out}")
    return None


def test_readme_blocks_are_run_or_marked():
    """Every block is one the test runs or shows, and only installs are skipped."""
    blocks = readme_blocks(README.read_text())
    assert any(b.lang in RUN for b in blocks)
    for b in blocks:
        assert b.lang in RUN | SHOWN, (
            f"README.md line {b.line}: a ```{b.lang} block is neither run ({sorted(RUN)}) nor shown "
            f"({sorted(SHOWN)}); use bash for commands")
        if b.marker and b.marker.group("kind") == "skip":
            assert re.search(r"\bpip\b|\bvenv\b", b.code), (
                f"README.md line {b.line}: only blocks that install packages may be skipped")
        if b.marker and b.marker.group("kind") == "server":
            assert b.lang == "bash" and urllib.parse.urlsplit(b.marker.group("arg")).port, b.line


def test_readme_is_short_and_for_users():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for word in ("issue", "session", "build environment"):
        assert word not in text.lower(), f"the README speaks of '{word}'"


def test_readme_runs_as_written(tmp_path):
    """Each block in README order, in one empty folder (later blocks use what earlier ones made)."""
    if not (Path(sys.executable).parent / "audioclip").exists():
        pytest.skip("the audioclip command is not installed beside this Python (pip install -e .)")
    env = _environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for block in readme_blocks(README.read_text()):
        if block.lang not in RUN or (block.marker and block.marker.group("kind") == "skip"):
            continue
        if block.marker and block.marker.group("kind") == "server":
            failure = _run_server(block, work, env)
            assert failure is None, failure
            continue
        proc = subprocess.run(_command(block, work), cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S)
        assert proc.returncode == 0, _describe(block, f"exit status {proc.returncode}\n{proc.stdout}")
