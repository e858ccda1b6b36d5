"""Tests for audioclip.checkpoints and the checkpoint commands of the CLI.

Downloads go to a small HTTP server on 127.0.0.1 that serves tmp_path and
supports Range requests, dropped connections and servers that ignore Range.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

from audioclip import checkpoints
from audioclip.checkpoints import (
    CheckpointError,
    PretrainedWeights,
    cache_dir,
    check_state_dict,
    download,
    load_state_dict,
    offline_mode,
    resolve,
    save_state_dict,
)
from audioclip.cli import main

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "layer.weight": torch.randn(64, 32),
        "layer.bias": torch.randn(64),
        "head.weight": torch.randn(10, 64),
    }


@pytest.fixture
def served(server):
    """A small checkpoint on the server and a registry entry for it."""
    path = server.root / "tiny.pt"
    torch.save(tiny_state(), path)
    data = path.read_bytes()
    weights = PretrainedWeights(
        name="tiny",
        filename="tiny.pt",
        url=f"{server.url}/tiny.pt",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        kind="audioclip",
        description="test checkpoint",
    )
    return server, weights, {"tiny": weights}


def use_registry(monkeypatch, registry):
    """Make ``registry`` the one registry (its dict's entries replaced: every module reads the same dict)."""
    for name in list(checkpoints.REGISTRY):
        monkeypatch.delitem(checkpoints.REGISTRY, name)
    for name, weights in registry.items():
        monkeypatch.setitem(checkpoints.REGISTRY, name, weights)


def range_requests(server):
    return [r for _, r in server.requests if r]


# --------------------------------------------------------------------------
# Cache folder and offline mode
# --------------------------------------------------------------------------


def test_cache_dir_argument_env_and_default(tmp_path, monkeypatch):
    assert cache_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("AUDIOCLIP_CACHE")
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(tmp_path / "user" / name))
    assert cache_dir() == tmp_path / "user" / "audioclip"


@pytest.mark.parametrize(
    "value, expected", [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("", False)]
)
def test_offline_mode_env(monkeypatch, value, expected):
    monkeypatch.setenv("AUDIOCLIP_OFFLINE", value)
    assert offline_mode() is expected
    assert offline_mode(False) is False
    assert offline_mode(True) is True


def test_registry_entries():
    assert set(checkpoints.REGISTRY) == {"full", "partial", "clip", "esrnxfbsp"}
    for name, w in checkpoints.REGISTRY.items():
        assert w.name == name
        assert w.url.endswith("/v0.1/" + w.filename)
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256)
        assert w.kind in {"audioclip", "clip", "esresnext"}


# --------------------------------------------------------------------------
# Download and resolve
# --------------------------------------------------------------------------


def test_resolve_downloads_into_cache_dir_argument(served, tmp_path):
    server, weights, registry = served
    cache = tmp_path / "cache"
    path, found = resolve("TINY", cache_dir=cache, registry=registry, progress=False)
    assert found == weights
    assert path == cache / "tiny.pt"
    assert path.read_bytes() == (server.root / "tiny.pt").read_bytes()
    assert not (cache / "tiny.pt.part").exists()
    assert torch.equal(load_state_dict(path)["head.weight"], tiny_state()["head.weight"])


def test_resolve_downloads_into_env_cache(served, tmp_path, monkeypatch):
    server, weights, registry = served
    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "envcache"))
    path, _ = resolve("tiny", registry=registry, progress=False)
    assert path == tmp_path / "envcache" / "tiny.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == weights.sha256
    # second call uses the cache without any request
    count = len(server.requests)
    assert resolve("tiny", registry=registry, progress=False)[0] == path
    assert len(server.requests) == count


def test_resume_after_dropped_connection(served, tmp_path):
    server, weights, registry = served
    cache = tmp_path / "cache"
    server.fail_after = weights.size // 2
    with pytest.raises(CheckpointError, match="resume") as info:
        resolve("tiny", cache_dir=cache, registry=registry, progress=False)
    assert weights.url in str(info.value)
    part = cache / "tiny.pt.part"
    assert part.stat().st_size == weights.size // 2
    assert not (cache / "tiny.pt").exists()

    path, _ = resolve("tiny", cache_dir=cache, registry=registry, progress=False)
    assert range_requests(server) == [f"bytes={weights.size // 2}-"]
    assert path.read_bytes() == (server.root / "tiny.pt").read_bytes()
    assert not part.exists()


def test_resume_when_server_ignores_range(served, tmp_path):
    server, weights, _ = served
    dest = tmp_path / "out.pt"
    Path(str(dest) + ".part").write_bytes(b"garbage")
    server.ignore_range = True
    download(weights.url, dest, sha256=weights.sha256, size=weights.size, progress=False)
    assert range_requests(server) == ["bytes=7-"]
    assert dest.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_resume_when_part_is_already_complete(served, tmp_path):
    server, weights, _ = served
    dest = tmp_path / "out.pt"
    Path(str(dest) + ".part").write_bytes((server.root / "tiny.pt").read_bytes())
    download(weights.url, dest, sha256=weights.sha256, progress=False)  # server answers 416
    assert range_requests(server) == [f"bytes={weights.size}-"]
    assert dest.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_sha256_mismatch(served, tmp_path):
    server, weights, _ = served
    bad = PretrainedWeights(**{**weights.__dict__, "sha256": "0" * 64})
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as info:
        resolve("tiny", cache_dir=cache, registry={"tiny": bad}, progress=False)
    message = str(info.value)
    assert weights.url in message and "0" * 64 in message and weights.sha256 in message
    assert not (cache / "tiny.pt").exists()
    assert not (cache / "tiny.pt.part").exists()


def test_timeout_keeps_part_for_resume(served, tmp_path):
    server, weights, _ = served
    server.stall = True
    dest = tmp_path / "out.pt"
    with pytest.raises(CheckpointError, match="resume") as info:
        download(weights.url, dest, size=weights.size, progress=False, timeout=0.3)
    assert weights.url in str(info.value)
    assert Path(str(dest) + ".part").stat().st_size == 100
    server.stall = False
    download(weights.url, dest, sha256=weights.sha256, size=weights.size, progress=False)
    assert range_requests(server) == ["bytes=100-"]
    assert dest.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_verify_replaces_cached_file_with_wrong_hash(served, tmp_path):
    server, weights, registry = served
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.pt").write_bytes(b"x" * weights.size)  # right size, wrong content
    assert resolve("tiny", cache_dir=cache, registry=registry)[0].read_bytes() == b"x" * weights.size
    path, _ = resolve("tiny", cache_dir=cache, registry=registry, progress=False, verify=True)
    assert path.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_http_404_names_url(served, tmp_path):
    server, weights, _ = served
    url = f"{server.url}/missing.pt"
    with pytest.raises(CheckpointError, match="404") as info:
        download(url, tmp_path / "missing.pt", progress=False)
    assert url in str(info.value)
    assert not (tmp_path / "missing.pt").exists()


def test_connection_refused_names_url(tmp_path):
    with pytest.raises(CheckpointError) as info:
        download("http://127.0.0.1:9/x.pt", tmp_path / "x.pt", progress=False, timeout=5)
    assert "http://127.0.0.1:9/x.pt" in str(info.value)


def test_base_url_env_overrides_registry_url(served, tmp_path, monkeypatch):
    server, weights, _ = served
    moved = PretrainedWeights(**{**weights.__dict__, "url": "http://127.0.0.1:9/nowhere/tiny.pt"})
    monkeypatch.setenv("AUDIOCLIP_BASE_URL", server.url + "/")
    path, _ = resolve("tiny", cache_dir=tmp_path / "c", registry={"tiny": moved}, progress=False)
    assert path.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_offline_absent_file(served, tmp_path, monkeypatch):
    server, weights, registry = served
    monkeypatch.setenv("AUDIOCLIP_OFFLINE", "1")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="offline") as info:
        resolve("tiny", cache_dir=cache, registry=registry)
    message = str(info.value)
    assert "tiny.pt" in message and str(cache) in message and weights.url in message
    assert "AUDIOCLIP_CACHE" in message
    assert server.requests == []


def test_offline_present_file_needs_no_network(served, tmp_path):
    server, weights, _ = served
    unreachable = PretrainedWeights(**{**weights.__dict__, "url": "http://127.0.0.1:9/tiny.pt"})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.pt").write_bytes((server.root / "tiny.pt").read_bytes())
    path, found = resolve("tiny", cache_dir=cache, offline=True, registry={"tiny": unreachable})
    assert path == cache / "tiny.pt" and found == unreachable
    again, _ = resolve("tiny", cache_dir=cache, offline=True, registry={"tiny": unreachable}, verify=True)
    assert again == path


def test_cached_file_with_wrong_size_is_replaced(served, tmp_path):
    server, weights, registry = served
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.pt").write_bytes(b"stale")
    with pytest.raises(CheckpointError, match="offline"):
        resolve("tiny", cache_dir=cache, offline=True, registry=registry)
    path, _ = resolve("tiny", cache_dir=cache, registry=registry, progress=False)
    assert path.read_bytes() == (server.root / "tiny.pt").read_bytes()


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(CheckpointError) as info:
        resolve("nonexistent", cache_dir=tmp_path)
    message = str(info.value)
    assert "nonexistent" in message
    for name in ("full", "partial", "clip", "esrnxfbsp"):
        assert name in message


def test_existing_path_and_filename_alias(served, tmp_path, monkeypatch):
    server, weights, registry = served
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    # no file named tiny.pt here: the registry filename is an alias
    path, found = resolve("tiny.pt", cache_dir=cache, registry=registry, progress=False)
    assert found == weights and path == cache / "tiny.pt"
    # an existing file of that name wins over the alias
    (tmp_path / "tiny.pt").write_bytes(b"local")
    assert resolve("tiny.pt", cache_dir=cache, registry=registry) == (Path("tiny.pt"), None)
    assert resolve(tmp_path / "tiny.pt", registry=registry) == (tmp_path / "tiny.pt", None)


# --------------------------------------------------------------------------
# load_state_dict / save_state_dict
# --------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    state = tiny_state()
    state["view"] = torch.arange(100.0)[10:20]  # view of a larger storage
    state["param"] = torch.nn.Parameter(torch.ones(3))
    path = save_state_dict(state, tmp_path / "new" / "dir" / "model.pt")
    loaded = load_state_dict(path)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key].detach())
    assert type(loaded["param"]) is torch.Tensor
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_save_rejects_non_tensor(tmp_path):
    with pytest.raises(CheckpointError, match="model.pt"):
        save_state_dict({"epoch": 3}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_state_dict(tmp_path / "absent.pt")
    assert "absent.pt" in str(info.value)


def test_load_directory(tmp_path):
    with pytest.raises(CheckpointError, match="folder") as info:
        load_state_dict(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="empty") as info:
        load_state_dict(path)
    assert "empty.pt" in str(info.value)


def test_load_truncated_file(tmp_path):
    path = tmp_path / "truncated.pt"
    torch.save(tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_state_dict(path)
    assert "truncated.pt" in str(info.value)


@pytest.mark.parametrize("content", [os.urandom(4096), b"hello, this is not a checkpoint\n"])
def test_load_garbage(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        load_state_dict(path)
    assert "garbage.pt" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"weight": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(torch.serialization.pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # precondition: torch refuses it
    with pytest.raises(CheckpointError, match="safety") as info:
        load_state_dict(path)
    message = str(info.value)
    assert "pickled.pt" in message and "argparse.Namespace" in message


@pytest.mark.parametrize("content", [[torch.zeros(1)], {"weight": torch.zeros(1), "epoch": 3}, {}])
def test_load_not_a_state_dict(tmp_path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert "odd.pt" in str(info.value)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_load_unwraps_trainer_checkpoint(tmp_path, wrapper):
    path = tmp_path / "trainer.pt"
    torch.save({wrapper: tiny_state(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    assert load_state_dict(path).keys() == tiny_state().keys()


def test_load_strips_ddp_prefix(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state().items()}}, path)
    assert load_state_dict(path).keys() == tiny_state().keys()
    # kept when only some keys have the prefix
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, path)
    assert set(load_state_dict(path)) == {"module.a", "b"}


# --------------------------------------------------------------------------
# check_state_dict
# --------------------------------------------------------------------------


def test_check_state_dict_reports_everything_at_once():
    state = {
        "ok": torch.zeros(2, 3),
        "fc.weight": torch.zeros(527, 2048),
        "extra": torch.zeros(1),
        "ignored.extra": torch.zeros(1),
    }
    expected = {
        "ok": torch.Size([2, 3]),
        "fc.weight": torch.Size([1024, 2048]),
        "missing.weight": torch.Size([4]),
        "ignored.missing": torch.Size([4]),
    }
    with pytest.raises(CheckpointError) as info:
        check_state_dict(
            state, expected, "model.pt", ignore_missing=["ignored.*"], ignore_unexpected=["ignored.*"]
        )
    message = str(info.value)
    assert message.startswith("model.pt: ")
    assert "missing.weight" in message and "extra" in message
    assert "fc.weight: expected [1024, 2048], found [527, 2048]" in message
    assert "ignored" not in message
    assert "ok" not in message.replace("does not", "")


def test_check_state_dict_accepts_matching_and_dtypes():
    state = {"w": torch.zeros(2, dtype=torch.float16), "n": torch.tensor(3)}
    check_state_dict(state, {"w": (torch.Size([2]), torch.float32), "n": (torch.Size([]), torch.int64)}, "x")
    check_state_dict(state, {"w": torch.Size([2]), "n": torch.Size([])}, "x")
    with pytest.raises(CheckpointError, match="n: expected dtype torch.float32"):
        check_state_dict(state, {"w": torch.Size([2]), "n": (torch.Size([]), torch.float32)}, "x")


def test_check_state_dict_truncates_long_lists():
    expected = {f"k{i}": torch.Size([1]) for i in range(25)}
    with pytest.raises(CheckpointError, match=r"missing keys \(25\): .*and 15 more"):
        check_state_dict({}, expected, "src")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def test_cli_checkpoints(tmp_path, capsys):
    assert main(["checkpoints", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("full", "partial", "clip", "esrnxfbsp"):
        assert name in out
    assert "537.3" in out and str(tmp_path) in out


def test_cli_download_unknown_name(tmp_path, capsys):
    assert main(["download", "nonexistent", "--cache-dir", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert "nonexistent" in captured.err and "full" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_download(served, tmp_path, capsys, monkeypatch):
    server, weights, registry = served
    use_registry(monkeypatch, registry)
    assert main(["download", "tiny", "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "tiny.pt")


def test_cli_download_reports_each_failure(served, tmp_path, capsys, monkeypatch):
    server, weights, registry = served
    use_registry(monkeypatch, registry)
    assert main(["download", "bogus", "tiny", "--cache-dir", str(tmp_path), "-q"]) == 1
    captured = capsys.readouterr()
    assert "bogus" in captured.err and "Traceback" not in captured.err
    assert captured.out.strip() == str(tmp_path / "tiny.pt")


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("audioclip ")
