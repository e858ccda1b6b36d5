"""The documentation: the site (with the API reference from the docstrings) builds with no
warning, and the README, docs/cli.md and ``audioclip --help`` list the same commands."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import audioclip
from audioclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _table_commands(path: Path) -> dict[str, str]:
    """``| `audioclip NAME` | ... |`` rows of a Markdown file: NAME -> the whole row."""
    rows = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\|\s*`audioclip ([a-z-]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def _help_commands() -> list[str]:
    """The subcommands as ``audioclip --help`` prints them (the 'commands:' section)."""
    out = subprocess.run([sys.executable, "-m", "audioclip", "--help"], capture_output=True, text=True,
                         check=True).stdout
    section = out.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    (\S+)", section, flags=re.M)


def _sub_choices(parser: argparse.ArgumentParser) -> list[str]:
    """What a command's --help offers as its first positional: sub-actions or fixed choices."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
        if not action.option_strings and action.choices:
            return list(action.choices)
    return []


def test_help_and_docs_list_the_same_commands():
    commands = _help_commands()
    assert len(commands) >= 10 and "classify" in commands, commands
    readme = _table_commands(ROOT / "README.md")
    cli_doc = _table_commands(ROOT / "docs" / "cli.md")
    assert list(readme) == commands, "README.md's command table differs from `audioclip --help`"
    assert list(cli_doc) == commands, "docs/cli.md's command table differs from `audioclip --help`"


def test_docs_name_each_commands_sub_actions():
    """`export hub|onnx`, `prepare extract|shards`: docs/cli.md's row names each one --help offers."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cli_doc = _table_commands(ROOT / "docs" / "cli.md")
    checked = 0
    for name, sub in subparsers.choices.items():
        for choice in _sub_choices(sub):
            assert f"`{choice}`" in cli_doc[name], f"docs/cli.md: `audioclip {name}` row does not name `{choice}`"
            checked += 1
    assert checked >= 4  # export hub/onnx, prepare extract/shards at least


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs and mkdocstrings are not installed (pip install -e '.[docs]')")
def test_docs_build_strictly(tmp_path):
    """mkdocs build --strict: no broken link or anchor, no docstring the API reference cannot read."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    documented = set(re.findall(r'id="audioclip\.(?:[\w.]+\.)?(\w+)"', api))
    missing = sorted(set(audioclip.__all__) - documented)
    assert not missing, f"docs/api.md does not document {missing} (in audioclip.__all__)"


def test_readme_and_guides_link_to_files_that_exist():
    """Relative links of the files outside the site (README, CONTRIBUTING, CHANGELOG)."""
    for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / name).read_text()):
            if "://" not in target:
                assert (ROOT / target).exists(), f"{name} links to {target}, which does not exist"
