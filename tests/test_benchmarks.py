"""Every script in benchmarks/ still runs: its ``--smoke`` mode, in a subprocess.

A smoke run takes seconds: tiny sizes, the tiny architecture or random
weights, every code path of the script, its temporary files in pytest's
temporary folder (``TMPDIR``). Its numbers mean nothing; what is checked is
that it exits 0 and prints its Markdown table. A new script without
``--smoke`` fails here. The selected scripts run two at a time (most of a
smoke run is starting Python and importing torch), longest first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))

# modules a script needs beyond the core install, and the extra that brings them
EXTRAS = {
    "bench_engines.py": ("ray", ["ray"]),
    "bench_hostile.py": ("index", ["lancedb", "faiss", "starlette", "uvicorn"]),
    "bench_index.py": ("index", ["lancedb", "faiss"]),
    "bench_onnx.py": ("onnx", ["onnx", "onnxruntime", "onnxscript"]),
    "bench_reindex.py": ("index", ["lancedb", "faiss"]),
    "bench_serve.py": ("index", ["lancedb", "faiss", "starlette", "uvicorn"]),
}
# the slowest first, so that two at a time finish together
ORDER = ["bench_inference.py", "gpu_check.py", "bench_engines.py", "bench_onnx.py", "bench_reindex.py"]
TIMEOUT_S = 900


def _missing(name: str) -> str | None:
    extra, modules = EXTRAS.get(name, (None, []))
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{name} needs the [{extra}] extra ({', '.join(absent)} not installed)" if absent else None


def _run(name: str, folder: Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(folder), "AUDIOCLIP_CACHE": str(folder / "cache"), "AUDIOCLIP_OFFLINE": "1"}
    try:
        return subprocess.run([sys.executable, str(BENCHMARKS / name), "--smoke"], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -1, e.stdout or "", f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def smoke_runs(request):
    """name -> a future of its smoke run, for the scripts this session selected (started here, two at a time)."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_smoke" and hasattr(item, "callspec")}
    runnable = sorted((s for s in selected if not _missing(s)),
                      key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    # short paths: Ray puts Unix sockets under TMPDIR, and a socket's path has at most 107 bytes
    root = Path(tempfile.mkdtemp(prefix="acb-"))
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(_run, name, root / str(i)) for i, name in enumerate(runnable)}
    yield futures
    pool.shutdown(wait=True)
    shutil.rmtree(root, ignore_errors=True)


def test_every_script_is_listed():
    assert "bench_index.py" in SCRIPTS and "gpu_check.py" in SCRIPTS  # the glob found the folder


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script, smoke_runs):
    reason = _missing(script)
    if reason:
        pytest.skip(reason)
    done = smoke_runs[script].result()
    assert done.returncode == 0, f"{script} --smoke exited {done.returncode}:\n{done.stderr[-4000:]}"
    table = [line for line in done.stdout.splitlines() if line.startswith("| ---") or line.startswith("|---")]
    assert table, f"{script} --smoke printed no Markdown table:\n{done.stdout[-2000:]}"
