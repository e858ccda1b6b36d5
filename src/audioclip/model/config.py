"""Named model configurations, stored as JSON data files in ``model_configs/``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

_CONFIG_PACKAGE = "audioclip.model_configs"


def list_model_configs() -> list[str]:
    """Names of the bundled configurations (``AudioCLIP-RN50`` is the paper's model)."""
    files = resources.files(_CONFIG_PACKAGE).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def load_model_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A configuration as a dict, from a bundled name, a JSON file path, or a dict (copied)."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    name = str(config)
    if name in list_model_configs():
        text = resources.files(_CONFIG_PACKAGE).joinpath(f"{name}.json").read_text()
    elif Path(name).is_file():
        text = Path(name).read_text()
    else:
        known = ", ".join(list_model_configs())
        raise ValueError(f"unknown model config {name!r}: not a bundled name ({known}) nor a JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"model config {name!r} is not valid JSON: {err}") from None
