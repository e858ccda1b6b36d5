"""Start-up of a command: open_clip's model code without open_clip's package ``__init__``.

Why it is kept: after torch and torchvision, importing AudioCLIP's model code
takes 0.08 s of CPU with :func:`light_open_clip` and 0.88 s without it (timm,
the Hugging Face hub client and every open_clip model family; medians of 11
runs on 2 shared cores); a whole one-clip ``audioclip classify`` took 7.5 s of
CPU with it and 7.9-8.0 s without (medians of 7). ``--help`` and the usage
checks never import open_clip, so they gain nothing from it.

What keeping it costs: the command's own process holds a stand-in module in
``sys.modules["open_clip"]`` (a :class:`types.ModuleType` subclass that runs
the real ``__init__`` the first time a name of the package is asked for), and
``timm`` is hidden while ``open_clip.model`` imports. It leans on open_clip
importing timm only for timm towers (true of the open_clip versions allowed, 3.x); if that
changes, the import fails and the whole package is imported as usual, so the
cost of a change upstream is the time saved, not a failure.
``tests/test_cli_usage.py::test_light_open_clip_defers_the_package`` checks both
halves. The Python API never calls it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["light_open_clip"]


class _OnDemandPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when a name it defines is first asked for.

    Its submodules import as usual (``import open_clip.model`` loads
    ``open_clip/model.py`` and what that imports, nothing else).
    """

    def __getattr__(self, name: str):
        state = self.__dict__
        if name.startswith("__") or state.get("_initialised"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        state["_initialised"] = True
        self.__spec__.loader.exec_module(self)  # the real __init__, into this module
        return getattr(self, name)


def light_open_clip() -> None:
    """Let the model import ``open_clip.model`` and ``open_clip.tokenizer`` without open_clip's whole package.

    ``import open_clip.model`` runs ``open_clip/__init__.py`` first, which
    imports every model family, the Hugging Face hub client and timm: about
    0.6-1 s of a command's start-up, for code AudioCLIP never runs (its text
    and image heads are open_clip's plain CLIP). Here the package's
    ``__init__`` is deferred until a name from it is used, and timm is left
    out of ``open_clip.model`` (open_clip treats it as optional: only timm
    towers need it). Done only by the command line, for its own process, and
    only when open_clip is not imported yet; a later ``import open_clip``
    still gets the whole package. Commands call it after their checks, just
    before they import the model (it imports torch).
    """
    if "open_clip" in sys.modules:
        return
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    package.__class__ = _OnDemandPackage
    sys.modules["open_clip"] = package
    blocked = "timm" not in sys.modules
    if blocked:
        sys.modules["timm"] = None  # type: ignore[assignment]  # "import timm" raises ImportError
    try:
        importlib.import_module("open_clip.model")
    except ImportError:  # an open_clip that needs timm after all: import it as it is
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[name]
    finally:
        if blocked:
            del sys.modules["timm"]
