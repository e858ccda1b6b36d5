"""The command line's contract: usage errors before any model load, exit statuses, one-line errors, shared options.

Usage errors are checked in this process with the model loader replaced by a
spy that fails the test if called; a few run in a subprocess to show they
come back in about a second, without torch being imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from audioclip import factory
from audioclip.cli import build_parser, main
from audioclip.cli import checks as cli_checks
from audioclip.cli import options as cli_options

SR = 44100
MODEL_COMMANDS = ("classify", "embed", "similarity", "index", "search", "serve", "evaluate")


@pytest.fixture
def loader(monkeypatch):
    """Replaces every way a command loads a model; the calls are recorded, and each one fails the command."""
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("the model loader was called")

    monkeypatch.setattr(factory, "create_model", spy)
    from audioclip.train import distributed, engine

    monkeypatch.setattr(distributed, "setup_distributed", spy)
    monkeypatch.setattr(engine, "Trainer", spy)
    monkeypatch.setenv("AUDIOCLIP_OFFLINE", "1")
    return calls


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav"):
        sf.write(root / name, (0.1 * rng.standard_normal((SR, 1))).astype(np.float32), SR)
    (root / "bad.wav").write_text("not audio")
    (root / "templates.txt").write_text("the sound of {}\na {} and a {}\n")
    (root / "empty.txt").write_text("# only a comment\n\n")
    (root / "folder").mkdir()
    (root / "db").mkdir()
    (root / "run").mkdir()
    (root / "run" / "last.pt").write_bytes(b"an earlier run")
    (root / "results").mkdir()
    (root / "results" / "results.json").write_text("{}")
    return root


def run(*args, capsys) -> tuple[int, str, str]:
    """The command in this process: (status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def usage_cases(m):
    wav, bad, folder = m / "a.wav", m / "bad.wav", m / "folder"
    missing = m / "absent.wav"
    return [
        # (arguments, words the one-line message must contain)
        (["classify", wav, "--labels", "dog", "--template", "the sound of a dog"], "has no '{}'"),
        (["classify", wav, "--labels", "dog", "--template", "{} and {}"], "2 placeholders"),
        (["classify", wav, "--labels", "dog", "--template", "a {x}"], "bare '{}'"),
        (["classify", wav, "--labels", "dog", "--templates-file", m / "templates.txt"], "line 2"),
        (["classify", wav, "--labels", " , "], "no labels"),
        (["classify", wav, "--labels-file", m / "empty.txt"], "no labels"),
        (["classify", wav, "--labels", "dog,cat,dog"], "more than once"),
        (["classify", missing, "--labels", "dog"], f"not found: {missing}"),
        (["classify", wav, "--labels", "dog", "--checkpoint", "no-such-weights"], "no-such-weights"),
        (["classify", wav, "--labels", "dog", "--checkpoint", folder], "is a folder"),
        (["embed", wav, "-o", m / "out.csv"], ".parquet, .npy, .jsonl"),
        (["embed", wav, "-o", folder], "is a folder"),
        (["embed", missing, "-o", m / "out.parquet"], "not found"),
        (["similarity", "--audio", wav], "at least two"),
        (["similarity", "--text", "a dog"], "at least two"),
        (["similarity", "--audio", missing, "--text", "a dog"], "not found"),
        (["similarity", "--audio", wav, "--text", ""], "--text: an empty text"),
        (["similarity", "--text", "a dog", "--text", "  "], "--text: an empty text"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50"], "--root"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", m / "absent"], "not found"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", folder, "--template", "no slot"],
         "has no '{}'"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", folder, "-o", m / "results"],
         "--overwrite"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", folder, "--checkpoint", "nope"], "nope"),
        (["index", missing, "--db", m / "newdb"], "not found"),
        (["index", wav, "--db", m / "newdb", "--checkpoint", "nope"], "nope"),
        (["search", "--db", m / "db"], "exactly one query"),
        (["search", "dog", "--db", m / "nodb"], "no index here"),
        (["search", "--audio", missing, "--db", m / "db"], "not found"),
        (["serve", "--db", m / "nodb"], "no index here"),
        (["train", "--config", "no-such-regime"], "no config"),
        (["train", "--config", "esc50-audioclip", "--data-root", m / "absent"], "not found"),
        (["train", "--config", "esc50-audioclip", "--data-root", folder, "-o", m / "run"], "--resume"),
        (["train", "--config", "esc50-audioclip", "--data-root", folder, "--checkpoint", "nope"], "nope"),
        (["train", "--config", "esc50-audioclip", "--data-root", folder, "--device", "cuda:1"], "train.device"),
        (["prepare", "extract", missing, m / "out"], "not found"),
        # odd arguments: empty names (Path("") is the current folder), files that are not what they should be
        (["classify", "", "--labels", "dog"], "an empty path"),
        (["index", "", "--db", m / "newdb"], "an empty path"),
        (["embed", wav, "-o", ""], "an empty file name"),
        (["classify", wav, "--labels", "dog", "--checkpoint", ""], "an empty name"),
        (["download", ""], "an empty checkpoint name"),
        (["convert", m / "a.wav", ""], "an empty file name"),
        (["export", "onnx", "--checkpoint", "AudioCLIP-tiny", "-o", ""], "an empty folder name"),
        (["train", "--config", wav], "not a UTF-8 text"),
    ]


def test_usage_errors_exit_2_with_one_line_and_no_model_load(media, loader, capsys):
    for args, words in usage_cases(media):
        code, out, err = run(*args, capsys=capsys)
        command = args[0]
        assert code == 2, (args, err)
        lines = err.splitlines()
        assert len(lines) == 1, (args, err)
        assert lines[0].startswith(f"audioclip {command}: error: "), (args, err)
        assert words in lines[0], (args, err)
        assert lines[0].endswith(" --help)") and f"(see audioclip {command}" in lines[0], (args, err)
        assert "Traceback" not in err and out == ""
    assert loader == []


@pytest.mark.parametrize("args, words", [
    (["serve", "--db", "x", "--port", "99999"], "1-65535"),
    (["serve", "--db", "x", "--port", "0"], "1-65535"),
    (["classify", "a.wav", "--labels", "dog", "--device", "gpu"], "cuda:N"),
    (["embed", "a.wav", "-o", "x.parquet", "--audio-mode", "int8"], "--audio-mode"),
    (["classify", "a.wav"], "--labels"),
    (["embed", "a.wav", "--shard", "3/2", "-o", "x.parquet"], "K <= N"),
    (["embed", "a.wav", "--shard", "1/99999999999999999999", "-o", "x.parquet"], "at most 2147483647"),
    (["classify", "a.wav", "--labels", "dog", "--window", "inf"], "finite"),
    (["classify", "a.wav", "--labels", "dog", "--window", "1e308"], "0.01 to 86400 seconds"),
    (["classify", "a.wav", "--labels", "dog", "--hop", "1e-9"], "0.01 to 86400 seconds"),
    (["classify", "a.wav", "--labels", "dog", "--window", "nan"], "must be positive"),
    (["embed", "a.wav", "-o", "x.parquet", "--max-duration", "-1"], "must be positive"),
    (["classify", "a.wav", "--labels", "dog", "-k", "0"], "at least 1"),
    (["classify", "a.wav", "--labels", "dog", "--top-k", "1e3"], "an integer"),
    (["index", "a.wav", "--db", "x", "--window", "-5"], "must be positive"),
    (["classify", "a.wav", "--labels", "dog", "-k", "abc"], "argument -k/--top-k: expected an integer, got 'abc'"),
    (["classify", "a.wav", "--labels", "dog", "--labels-file", "l.txt"], "not allowed with"),
    (["classify", "a.wav", "--labels", "dog", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["search", "dog", "--db", "x", "-k", "abc"], "an integer"),
    (["evaluate", "--task", "nope"], "invalid choice: 'nope'"),
    (["prepare"], "required"),
    (["embed", "a.wav", "-o", "x.parquet", "--workers", "100000"], "must be 0 to 64"),
    (["classify", "a.wav", "--labels", "dog", "--workers", "65"], "must be 0 to 64"),
    (["index", "a.wav", "--db", "x", "--workers", "-1"], "must be 0 to 64"),
    (["evaluate", "--task", "zeroshot", "--workers", "1000"], "must be 0 to 64"),
    (["train", "--config", "esc50-audioclip", "--workers", "1000"], "must be 0 to 64"),
])
def test_parse_errors_exit_2_naming_the_option(args, words, loader, capsys):
    """argparse's own errors have the shape of every usage error: one line, the command, a pointer to --help."""
    code, out, err = run(*args, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert err.startswith(f"audioclip {args[0]}: error: ") and err.endswith(f" (see audioclip {args[0]} --help)\n")
    assert "Traceback" not in err and "usage:" not in err and out == "" and loader == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["classify", "embed", "similarity", "evaluate", "train"])
def test_cuda_without_a_gpu_is_a_usage_error(media, loader, capsys, command):
    wav = media / "a.wav"
    args = {
        "classify": ["classify", wav, "--labels", "dog"],
        "embed": ["embed", wav, "-o", media / "cuda.parquet"],
        "similarity": ["similarity", "--audio", wav, "--text", "dog"],
        "evaluate": ["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", media / "folder"],
        "train": ["train", "--config", "esc50-audioclip", "--data-root", media / "folder", "-o", media / "cudarun"],
    }[command]
    code, _, err = run(*args, "--device", "cuda", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "no CUDA GPU" in err and "Traceback" not in err
    assert loader == []


def _timed(*args, env=None):
    """A usage error in a fresh interpreter: (status, stderr, seconds, whether torch was imported)."""
    code = ("import sys\nfrom audioclip.cli import main\nstatus = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(status)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "AUDIOCLIP_OFFLINE": "1", **(env or {})}, timeout=120)
    return proc.returncode, proc.stderr, time.perf_counter() - start, proc.stdout.strip() == "True"


def test_usage_errors_come_back_fast_without_importing_torch(media):
    cases = [
        ["classify", media / "a.wav", "--labels", "dog", "--template", "no placeholder"],
        ["classify", media / "a.wav", "--labels", "dog", "--checkpoint", "no-such-weights"],
        ["embed", media / "a.wav", "-o", media / "out.csv"],
        ["similarity", "--text", "only one"],
        ["evaluate", "--task", "zeroshot", "--dataset", "esc50"],
        ["serve", "--db", media / "db", "--port", "99999"],
    ]
    for args in cases:
        code, err, seconds, torch_imported = _timed(*args)
        assert code == 2, err
        assert not torch_imported, args
        # "about a second": an interpreter start and argparse; generous for a loaded 2-core machine
        assert seconds < 3.0, (args, seconds)


def test_missing_registered_weights_offline_fail_before_torch(media, tmp_path):
    code, err, _, torch_imported = _timed("classify", media / "a.wav", "--labels", "dog",
                                          env={"AUDIOCLIP_CACHE": str(tmp_path)})
    assert code == 1 and "offline" in err and err.count("\n") == 1 and not torch_imported


# -- exit statuses and errors ----------------------------------------------------------------------------


def test_exit_statuses_0_1_3(media, capsys):
    tiny = ["--checkpoint", "AudioCLIP-tiny", "--device", "cpu"]
    assert run("classify", media / "a.wav", "--labels", "dog,rain", *tiny, capsys=capsys)[0] == 0
    code, _, err = run("classify", media / "a.wav", media / "bad.wav", "--labels", "dog,rain", *tiny, capsys=capsys)
    assert code == 3 and "bad.wav" in err
    code, _, err = run("classify", media / "bad.wav", "--labels", "dog,rain", *tiny, capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("audioclip classify: error: ")


def test_an_unexpected_error_is_one_line_and_the_traceback_only_with_debug(media, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(factory, "create_model", broken)
    args = ["classify", media / "a.wav", "--labels", "dog", "--checkpoint", "AudioCLIP-tiny", "--device", "cpu"]
    code, _, err = run(*args, capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("audioclip classify: error: RuntimeError: boom second line") and "--debug" in err
    code, _, err = run(*args, "--debug", capsys=capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert err.splitlines()[-1].startswith("audioclip classify: error: RuntimeError: boom")


def test_known_errors_are_one_line_without_a_type(media, monkeypatch, capsys):
    from audioclip.checkpoints import CheckpointError

    def missing(*args, **kwargs):
        raise CheckpointError("weights.pt: truncated file")

    monkeypatch.setattr(factory, "create_model", missing)
    code, _, err = run("embed", media / "a.wav", "-o", media / "never.parquet", "--checkpoint", "AudioCLIP-tiny",
                       "--device", "cpu", capsys=capsys)
    assert (code, err) == (1, "audioclip embed: error: weights.pt: truncated file\n")


def test_similarity_json(media, capsys):
    code, out, _ = run("similarity", "--audio", media / "a.wav", "--audio", media / "b.wav", "--text", "a dog",
                       "--json", "--checkpoint", "AudioCLIP-tiny", "--device", "cpu", capsys=capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3  # 3 items, 3 pairs
    assert set(rows[0]) == {"a", "b", "modality_a", "modality_b", "cosine", "logit"}
    by_pair = {(r["modality_a"], r["modality_b"]): r for r in rows}
    assert by_pair[("audio", "audio")]["logit"] is None  # one modality: no learned temperature
    text_pair = [r for r in rows if r["modality_b"] == "text"]
    assert all(r["b"] == "a dog" and isinstance(r["logit"], float) for r in text_pair)
    assert all(-1.0 <= r["cosine"] <= 1.0 for r in rows)


def test_embed_overwrite_starts_over_and_other_outputs_are_refused(media, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    tiny = ["--checkpoint", "AudioCLIP-tiny", "--device", "cpu"]
    assert run("embed", media / "a.wav", "-o", out, *tiny, capsys=capsys)[0] == 0
    code, _, err = run("embed", media / "a.wav", "-o", out, "--overwrite", *tiny, capsys=capsys)
    assert code == 0 and "(1 now, 0 before)" in err
    code, _, err = run("embed", media / "a.wav", "-o", tmp_path / "emb.bin", "--format", "jsonl", *tiny,
                       capsys=capsys)
    assert code == 0  # any name with an explicit --format


def test_a_missing_extra_names_the_pip_command(monkeypatch, media, loader, capsys):
    real = cli_checks._importable
    gone = {"lancedb", "yaml", "torchmetrics"}
    monkeypatch.setattr(cli_checks, "_importable", lambda module: module not in gone and real(module))
    for args, extra in [
        (["search", "dog", "--db", media / "db"], "index"),
        (["index", media / "a.wav", "--db", media / "newdb"], "index"),
        (["serve", "--db", media / "db"], "index"),
        (["train", "--config", "esc50-audioclip"], "train"),
        (["prepare", "shards", "--config", "esc50-audioclip", media / "shards"], "train"),
        (["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", media / "folder"], "eval"),
    ]:
        code, _, err = run(*args, capsys=capsys)
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert f'pip install "audioclip[{extra}]"' in err and err.startswith(f"audioclip {args[0]}: error: ")
    assert loader == []
    # the core commands need no extra
    code, _, err = run("classify", media / "a.wav", "--labels", "dog", "--template", "nope", capsys=capsys)
    assert code == 2 and "audioclip[" not in err


def test_light_open_clip_defers_the_package():
    """The command line's start-up: AudioCLIP's model code imports without timm or open_clip's package __init__,
    and the package is still whole the first time one of its names is used."""
    code = ("import sys\n"
            "from audioclip.cli.startup import light_open_clip\n"
            "light_open_clip()\n"
            "import audioclip.model.audioclip\n"
            "print(sorted(m for m in ('timm', 'open_clip.factory') if m in sys.modules))\n"
            "import open_clip\n"
            "print(callable(open_clip.create_model), 'open_clip.factory' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "True True"]


def test_core_commands_run_without_the_extras(media, tmp_path):
    """classify, embed and similarity with the extras' modules unimportable, as in a core-only install."""
    code = (
        "import sys\n"
        "EXTRAS = {'lancedb', 'faiss', 'pymilvus', 'yaml', 'webdataset', 'tensorboard', 'torchmetrics',\n"
        "          'matplotlib', 'scipy', 'sklearn', 'pandas'}\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in EXTRAS:\n"
        "            raise ImportError(f'{name}: not installed (test)')\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from audioclip.cli import main\n"
        "tiny = ['--checkpoint', 'AudioCLIP-tiny', '--device', 'cpu']\n"
        f"wav, out = {str(media / 'a.wav')!r}, {str(tmp_path / 'emb.parquet')!r}\n"
        "codes = [main(['classify', wav, '--labels', 'dog,rain', *tiny]),\n"
        "         main(['embed', wav, '-o', out, *tiny]),\n"
        "         main(['similarity', '--audio', wav, '--text', 'a dog', '--json', *tiny])]\n"
        "print('codes', codes, sorted(m for m in sys.modules if m.split('.')[0] in EXTRAS))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AUDIOCLIP_OFFLINE": "1"})
    assert "codes [0, 0, 0] []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "emb.parquet").is_file()


# -- one command line ------------------------------------------------------------------------------------


def _options(parser) -> dict:
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s: a for a in sub._actions for s in a.option_strings}
            for name, sub in subparsers.choices.items()}


def test_shared_options_have_the_same_names_defaults_and_choices():
    from audioclip.model.transforms import AUDIO_MODES

    commands = _options(build_parser())
    assert set(MODEL_COMMANDS) | {"train", "prepare", "checkpoints", "download"} <= set(commands)
    assert cli_options.AUDIO_MODES == tuple(m for m in AUDIO_MODES if m != "int8")
    from audioclip.inference import MAX_WORKERS

    assert cli_options.MAX_WORKERS == MAX_WORKERS
    for name in MODEL_COMMANDS:
        opts = commands[name]
        for flag in ("--checkpoint", "--device", "--audio-mode", "--precision", "--cache-dir", "--offline",
                     "-q", "--quiet", "-v", "--verbose", "--debug"):
            assert flag in opts, (name, flag)
        expected = None if name in ("index", "search", "serve") else "full"
        assert opts["--checkpoint"].default == expected, name
        assert opts["--device"].default == "auto" and opts["--device"].type is cli_options.device, name
        assert opts["--audio-mode"].default == "default", name
        assert tuple(opts["--audio-mode"].choices) == cli_options.AUDIO_MODES, name
        assert opts["--precision"].default == "fp32" and tuple(opts["--precision"].choices) == ("fp32", "bf16", "fp16")
        assert opts["-q"] is opts["--quiet"] and opts["-v"] is opts["--verbose"]
    train = commands["train"]
    assert train["--checkpoint"].default is None  # the config's starting weights
    assert train["--device"].default == "auto" and train["--device"].type is cli_options.device
    for name in ("embed", "evaluate", "train"):
        assert commands[name]["-o"] is commands[name]["--output"] and "--overwrite" in commands[name], name
    for name, opts in commands.items():
        if name != "prepare":  # prepare's options are on its two actions
            assert {"-q", "-v", "--debug"} <= set(opts), name


def test_python_m_audioclip_runs_train_and_evaluate():
    for command in ("train", "evaluate", "prepare"):
        proc = subprocess.run([sys.executable, "-m", "audioclip", command, "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and f"usage: audioclip {command}" in proc.stdout
    for old in ("audioclip.train", "audioclip.evaluate"):
        proc = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0  # replaced by `python -m audioclip train|evaluate`


def test_no_lower_layer_imports_the_command_line():
    import ast
    from pathlib import Path

    import audioclip

    root = Path(audioclip.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.parts[len(root.parts)] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [("." * node.level) + node.module]
            if any(n == "audioclip.cli" or n.startswith("audioclip.cli.") or n.lstrip(".") == "cli" for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_counts_too_large_for_c_are_usage_errors(capsys):
    """A count that would overflow in C (``-k 1e20``) is a one-line usage error, not an OverflowError."""
    import pytest

    from audioclip.cli import main

    with pytest.raises(SystemExit) as info:
        main(["search", "--db", "nowhere", "dog", "-k", "99999999999999999999"])
    assert info.value.code == 2
    assert "must be at most 2147483647" in capsys.readouterr().err


def test_search_with_the_largest_k_answers(tmp_path):
    """-k at its upper bound searches (candidates are capped at the table's size)."""
    import numpy as np
    import soundfile as sf

    from audioclip import create_model as _create, save_model as _save
    from audioclip.cli import main

    ckpt = _save(_create("AudioCLIP-tiny"), tmp_path / "tiny.pt")
    sf.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(44100)).astype("float32"), 44100)
    assert main(["index", str(tmp_path / "a.wav"), "--db", str(tmp_path / "db"), "--checkpoint", str(ckpt), "-q"]) == 0
    assert main(["search", "--db", str(tmp_path / "db"), "dog", "-k", "2147483647", "-q"]) == 0


# -- files read on the user's behalf: bounded, regular files only -------------------------------------------


def _limited(*args, timeout=60):
    """The command in a fresh interpreter with 3 GB of address space (a file read whole fails fast, not the machine)."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    code = ("import sys\nfrom audioclip.cli import main\nstatus = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(status)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, env={**os.environ, "AUDIOCLIP_OFFLINE": "1"})
    return proc.returncode, proc.stderr, proc.stdout.strip() == "True"


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX special files")
def test_list_and_config_files_are_read_bounded_fifos_and_devices_refused(media, tmp_path):
    """/dev/zero, a FIFO or an over-large file as a list or config file: one line naming it, exit 2, before torch."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    big.write_bytes(b"dog\n" * 300_000)  # 1.2 MB of labels
    wav, root = media / "a.wav", media / "folder"
    commands = {
        "--labels-file": ["classify", wav, "--labels-file"],
        "--templates-file": ["classify", wav, "--labels", "dog", "--templates-file"],
        "evaluate --templates-file": ["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", root,
                                      "--templates-file"],
        "--class-names": ["evaluate", "--task", "zeroshot", "--dataset", "imagenet", "--root", root, "--class-names"],
        "train --config": ["train", "--data-root", root, "--config"],
    }
    for name, args in commands.items():
        for path, problem in (("/dev/zero", "not a regular file (a character device)"),
                              (fifo, "not a regular file (a FIFO)"), (big, "more than the 1 MB allowed")):
            code, err, torch_imported = _limited(*args, path)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, (name, path, err[-2000:])
            assert lines[0].startswith(f"audioclip {args[0]}: error: {path}: ") and problem in lines[0], (name, err)
            assert not torch_imported, (name, path)


def test_a_locked_or_planted_output_lock_is_refused_before_torch_is_imported(media, tmp_path):
    """Another job's output: exit 2 at once (no torch); a link planted at the lock: one line, its target untouched."""
    from audioclip.embeddings_io import output_lock
    from audioclip.io import exclusive_lock

    out = tmp_path / "emb.parquet"
    with exclusive_lock(output_lock(out)):
        code, err, _, torch_imported = _timed("embed", media / "a.wav", "-o", out, "--checkpoint", "AudioCLIP-tiny")
    assert code == 2 and err.count("\n") == 1 and "being written by another job now" in err, err
    assert not torch_imported and not out.exists()

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    output_lock(out).symlink_to(victim)
    code, err, _, torch_imported = _timed("embed", media / "a.wav", "-o", out, "--checkpoint", "AudioCLIP-tiny")
    assert code == 1 and err.count("\n") == 1 and "the lock file is a symbolic link" in err, err
    assert not torch_imported and victim.read_text() == "precious\n" and not out.exists()
