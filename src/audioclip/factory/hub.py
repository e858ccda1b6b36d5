"""Hugging Face Hub models: a repository (``hf-hub:ORG/NAME``) or a local folder laid out like one.

Such a folder holds ``config.json`` (the architecture, or its full config
under ``model_cfg``) and ``model.safetensors``; ``audioclip export hub`` writes
one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints import CheckpointError
from .configs import MAX_CONFIG_BYTES, check_model_config, list_models

__all__ = ["HUB_CONFIG", "HUB_PREFIX", "HUB_WEIGHTS", "hub_files"]

HUB_PREFIX = "hf-hub:"
HUB_CONFIG = "config.json"  # names the architecture (and its full config) of a Hub folder
HUB_WEIGHTS = "model.safetensors"


def hub_files(name: str, folder: Path | None, *, cache_dir, offline) -> tuple[Path, dict[str, Any]]:
    """``(weights file, config)`` of the Hub repository ``name`` or, with ``folder``, a local folder laid out like one.

    A repository is fetched by ``huggingface_hub`` into its own cache (its
    revisions, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN`` apply);
    ``offline=True`` reads that cache only.
    """
    import json

    if folder is not None:
        folder = Path(folder)
        config_path, weights_path = folder / HUB_CONFIG, folder / HUB_WEIGHTS
        if not weights_path.is_file():
            raise CheckpointError(f"{folder}: has {HUB_CONFIG} but no {HUB_WEIGHTS}")
    else:
        config_path, weights_path = _hub_download(name, (HUB_CONFIG, HUB_WEIGHTS),
                                           cache_dir=cache_dir, offline=offline)
    from ..io import FileReadError, read_text_bounded

    try:
        cfg = json.loads(read_text_bounded(config_path, MAX_CONFIG_BYTES, what=HUB_CONFIG))
    except FileReadError as e:
        raise CheckpointError(f"{name}: {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{name}: {HUB_CONFIG} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict) or not (cfg.get("architecture") or cfg.get("model_cfg")):
        raise CheckpointError(f"{name}: {HUB_CONFIG} names no architecture (an 'architecture' key)")
    # The folder names a bundled architecture, or carries its full config (then "architecture" is only a
    # label): never a path, which would be opened as a config file.
    architecture, model_cfg = cfg.get("architecture"), cfg.get("model_cfg")
    if model_cfg is not None:
        check_model_config(model_cfg, f"{name}: {HUB_CONFIG} model_cfg")
        if architecture is not None and (not isinstance(architecture, str) or len(architecture) > 200):
            raise CheckpointError(f"{name}: {HUB_CONFIG} 'architecture' is not a name")
    elif architecture not in list_models():
        shown = repr(architecture) if len(repr(architecture)) <= 60 else repr(architecture)[:57] + "..."
        raise CheckpointError(f"{name}: {HUB_CONFIG} names the architecture {shown}, which is not "
                              f"bundled ({', '.join(list_models())}) and gives no 'model_cfg'")
    return Path(weights_path), cfg


def _hub_download(name: str, filenames: tuple[str, ...], *, cache_dir, offline) -> list[str]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:
        raise CheckpointError(f'{name}: loading from the Hugging Face Hub needs pip install "audioclip[hub]"') from None
    repo, _, revision = name[len(HUB_PREFIX):].partition("@")
    paths = []
    for filename in filenames:
        try:
            paths.append(hf_hub_download(repo, filename, revision=revision or None, local_files_only=bool(offline),
                                         cache_dir=None if cache_dir is None else Path(cache_dir) / "hf-hub"))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise CheckpointError(f"{name}: {filename} is not in the Hugging Face cache and downloads are off "
                                  f"({type(e).__name__})") from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            raise CheckpointError(f"{name}: cannot fetch {filename} from the Hub"
                                  f"{f' (HTTP {status})' if status else ''}: {str(e).splitlines()[0]}") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{name}: cannot fetch {filename} from the Hub: {e}") from None
    return paths


