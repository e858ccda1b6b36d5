"""The package's shape: the import-linter contracts in .importlinter, and what the model package may import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# audioclip.model may import these third-party packages and the standard library, nothing else.
MODEL_EXTERNALS = {"torch", "torchvision", "open_clip"}


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 3 kept, 0 broken" in run.stdout, run.stdout


def test_contracts_name_every_top_level_module():
    """A new module must be placed in a layer, or the contract silently ignores it."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("audioclip")
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    layered = set()
    in_layers = False
    for line in (ROOT / ".importlinter").read_text().splitlines():
        if line.startswith("[importlinter:contract:layers]"):
            in_layers = True
        elif line.startswith("["):
            in_layers = False
        elif in_layers and line.startswith("    "):
            layered |= {part.strip() for part in line.replace(":", "|").split("|")}
    unplaced = top - layered - {"__main__", "model_configs"}
    assert not unplaced, f"modules in no layer of .importlinter: {sorted(unplaced)}"


def test_model_package_imports_only_torch_torchvision_open_clip():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("audioclip", include_external_packages=True)
    imported = set()
    for module in graph.find_descendants("audioclip.model") | {"audioclip.model"}:
        imported |= {m.split(".")[0] for m in graph.find_modules_directly_imported_by(module)}
    outside = {m for m in imported if m != "audioclip" and m not in sys.stdlib_module_names}
    assert outside <= MODEL_EXTERNALS, f"audioclip.model imports {sorted(outside - MODEL_EXTERNALS)}"
    inside = {
        m for module in graph.find_descendants("audioclip.model") | {"audioclip.model"}
        for m in graph.find_modules_directly_imported_by(module)
        if m.startswith("audioclip.") and not m.startswith("audioclip.model")
    }
    assert not inside, f"audioclip.model imports {sorted(inside)}"
