"""One head: a linear layer over embeddings, its labels, its threshold, and its two files.

Shapes: ``C`` classes (the background class, if any, is one of them), ``D`` the
embedding size (1024 for the published weights, 64 for ``AudioCLIP-tiny``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AudioclipError
from ..io import FileReadError, fsync_folder, read_bytes_bounded, read_text_bounded, write_bytes_atomic

__all__ = ["HEAD_FORMAT", "HEAD_JSON", "HEAD_WEIGHTS", "NONE_LABEL", "Head", "HeadError", "HeadMismatchError",
           "is_head_dir", "load_head", "replace_folder"]

HEAD_FORMAT = "audioclip-head/1"
HEAD_JSON = "head.json"
HEAD_WEIGHTS = "head.safetensors"
#: the decision when no class passes the threshold (or the background class wins)
NONE_LABEL = "none"
ACTIVATIONS = ("softmax", "sigmoid")

# A head of 10 000 classes on 1024-d vectors is 40 MB per stored matrix; its JSON is labels and metrics.
_MAX_WEIGHTS_BYTES = 1 << 30
_MAX_JSON_BYTES = 16 << 20


class HeadError(AudioclipError, ValueError):
    """A head folder that cannot be read or used: one line naming the folder and the problem."""


class HeadMismatchError(HeadError):
    """A head used with a model (or embeddings) of another checkpoint than the one it was fitted on."""


@dataclass
class Head:
    """A fitted head.

    ``weight`` ``(C, D)`` and ``bias`` ``(C,)`` are the layer applied (the mixture
    ``(1 - alpha) * zeroshot + alpha * trained``); ``parts`` holds the two
    partners (``"trained.weight"``, ``"trained.bias"``, ``"zeroshot.weight"``)
    when known. ``threshold``: a clip whose best class scores below it is
    :data:`NONE_LABEL`. ``info``: everything else of ``head.json`` (checkpoint,
    window settings, metrics, ...).
    """

    labels: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    activation: str = "softmax"
    background: str | None = None
    threshold: float = 0.0
    alpha: float = 1.0
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None

    def __post_init__(self):
        self.labels = [str(label) for label in self.labels]
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32).contiguous()
        self.bias = torch.as_tensor(self.bias, dtype=torch.float32).contiguous()
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise HeadError(f"{self._name()}: weight {tuple(self.weight.shape)} and bias "
                            f"{tuple(self.bias.shape)} are not a linear layer")
        if len(self.labels) != self.weight.shape[0]:
            raise HeadError(f"{self._name()}: {len(self.labels)} labels for {self.weight.shape[0]} classes")
        if len(set(self.labels)) != len(self.labels):
            raise HeadError(f"{self._name()}: labels repeat")
        if self.activation not in ACTIVATIONS:
            raise HeadError(f"{self._name()}: activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.background is not None and self.background not in self.labels:
            raise HeadError(f"{self._name()}: background class {self.background!r} is not among the labels")

    def _name(self) -> str:
        return f"head {self.folder}" if self.folder else "head"

    # -- what it computes -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """``D``, the embedding size the head takes."""
        return int(self.weight.shape[1])

    @property
    def checkpoint(self) -> str | None:
        """The id of the checkpoint whose embeddings it was fitted on (:func:`audioclip.checkpoint_id`)."""
        return self.info.get("checkpoint")

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` embeddings (normalised here, as the head was fitted) -> ``(N, C)`` logits, float32."""
        x = torch.as_tensor(embeddings).detach().float().cpu()
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise HeadError(f"{self._name()} takes {self.dim}-d embeddings, got shape {tuple(x.shape)}")
        return F.normalize(x, dim=-1) @ self.weight.T + self.bias

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, C)``: a softmax over the classes (rows sum to 1), or a sigmoid per class."""
        z = self.logits(embeddings)
        return z.softmax(dim=-1) if self.activation == "softmax" else torch.sigmoid(z)

    def decide(self, probabilities: torch.Tensor) -> list[str]:
        """One decision per row: the best class, or :data:`NONE_LABEL` when it is the background class or scores
        below the threshold; with a sigmoid head, the classes at or above ``max(0.5, threshold)`` joined by ``;``."""
        probs = torch.as_tensor(probabilities)
        out = []
        for row in probs.tolist():
            if self.activation == "sigmoid":
                cut = max(0.5, self.threshold)
                chosen = [label for label, p in zip(self.labels, row) if p >= cut and label != self.background]
                out.append(";".join(chosen) if chosen else NONE_LABEL)
                continue
            best = max(range(len(row)), key=row.__getitem__)
            if self.labels[best] == self.background or row[best] < self.threshold:
                out.append(NONE_LABEL)
            else:
                out.append(self.labels[best])
        return out

    def predict(self, embeddings: torch.Tensor) -> list[str]:
        """:meth:`decide` on :meth:`probabilities`."""
        return self.decide(self.probabilities(embeddings))

    def mixed(self, alpha: float) -> Head:
        """The same head with another mixing weight (0: the zero-shot classifier; 1: the trained one)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        missing = [k for k in ("trained.weight", "trained.bias", "zeroshot.weight") if k not in self.parts]
        if missing:
            raise HeadError(f"{self._name()} does not hold its parts ({', '.join(missing)}): it cannot be re-mixed")
        weight, bias = mix(self.parts, alpha)
        return Head(self.labels, weight, bias, self.activation, self.background, self.threshold, alpha,
                    dict(self.parts), dict(self.info), self.folder)

    def as_module(self) -> nn.Module:
        """A torch module ``(N, D) -> (N, C)`` probabilities (for export): normalise, linear, activation."""
        return _HeadModule(self.weight, self.bias, self.activation)

    # -- checks ---------------------------------------------------------------------------------------

    def check_checkpoint(self, checkpoint_id: str | None, what: str = "the model") -> None:
        """A :class:`HeadMismatchError` (one line naming both) unless ``checkpoint_id`` is the head's checkpoint."""
        mine = self.checkpoint
        if mine is None or checkpoint_id is None or mine == checkpoint_id:
            return
        raise HeadMismatchError(f"{self._name()} was fitted on embeddings of checkpoint {mine}, but {what} is "
                                f"{checkpoint_id}: use that checkpoint, or fit the head again on this one")

    # -- files ----------------------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, **{k: v.float().contiguous() for k, v in self.parts.items()}}

    def to_json(self, weights_sha256: str) -> dict[str, Any]:
        return {**self.info, "format": HEAD_FORMAT, "labels": self.labels, "background": self.background,
                "activation": self.activation, "alpha": self.alpha, "threshold": self.threshold,
                "embedding_dim": self.dim, "weights_sha256": weights_sha256}

    def files(self) -> dict[str, bytes]:
        """``{name: content}`` of the head's two files."""
        from safetensors.torch import save

        weights = save(self.tensors(), metadata={"format": HEAD_FORMAT})
        text = json.dumps(self.to_json(hashlib.sha256(weights).hexdigest()), indent=2, ensure_ascii=False,
                          default=_jsonable)
        return {HEAD_WEIGHTS: weights, HEAD_JSON: text.encode("utf-8") + b"\n"}

    def save(self, folder: str | os.PathLike, *, extra: Mapping[str, bytes] | None = None,
             carry: Sequence[str] = ()) -> Path:
        """Write the head (and ``extra`` files) as the folder ``folder``, replacing it whole (:func:`replace_folder`).

        ``carry``: names of files in the folder being replaced that the new one keeps (linked, not copied).
        """
        files = {**(extra or {}), **self.files()}
        return replace_folder(folder, files, carry=carry)


def mix(parts: Mapping[str, torch.Tensor], alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - alpha) * zero-shot + alpha * trained``, as one layer: ``(C, D)`` weight and ``(C,)`` bias."""
    weight = (1.0 - alpha) * parts["zeroshot.weight"].float() + alpha * parts["trained.weight"].float()
    return weight, alpha * parts["trained.bias"].float()


class _HeadModule(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, activation: str):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.activation = activation

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = self.linear(F.normalize(embeddings.float(), dim=-1))
        return z.softmax(dim=-1) if self.activation == "softmax" else torch.sigmoid(z)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


# -- reading ----------------------------------------------------------------------------------------------


def is_head_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a head's ``head.json`` (cheap: reads nothing)."""
    return (Path(folder) / HEAD_JSON).is_file()


def load_head(folder: str | os.PathLike, *, checkpoint: str | None = None) -> Head:
    """The head in ``folder``; with ``checkpoint`` (an id from :func:`audioclip.checkpoint_id`), refused unless
    the head was fitted on that checkpoint's embeddings.

    Every problem is a :class:`HeadError` in one line naming the folder: a missing or oversized file, JSON that
    is not a head's, weights that are not the ones ``head.json`` was written with (its sha256), wrong shapes.
    """
    folder = Path(folder)
    name = f"head {folder}"
    if not folder.is_dir():
        raise HeadError(f"{name}: not a folder" if folder.exists() else f"{name}: no such folder")
    try:
        text = read_text_bounded(folder / HEAD_JSON, _MAX_JSON_BYTES, what="head description")
        weights = read_bytes_bounded(folder / HEAD_WEIGHTS, _MAX_WEIGHTS_BYTES, what="head weights")
    except FileReadError as err:
        raise HeadError(f"{name}: {err}") from None
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise HeadError(f"{name}: {HEAD_JSON} is not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise HeadError(f"{name}: {HEAD_JSON} is not an audioclip head (format {HEAD_FORMAT!r} expected)")
    if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
        raise HeadError(f"{name}: {HEAD_WEIGHTS} is not the file {HEAD_JSON} describes (sha256 differs)")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(weights)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise HeadError(f"{name}: {HEAD_WEIGHTS} is not a safetensors file ({err})") from None
    if "weight" not in tensors or "bias" not in tensors:
        raise HeadError(f"{name}: {HEAD_WEIGHTS} has no weight and bias")
    info = {k: v for k, v in meta.items() if k not in ("labels", "background", "activation", "alpha", "threshold",
                                                          "weights_sha256", "format")}
    try:
        head = Head(labels=list(meta.get("labels") or []), weight=tensors.pop("weight"), bias=tensors.pop("bias"),
                    activation=meta.get("activation", "softmax"), background=meta.get("background"),
                    threshold=float(meta.get("threshold") or 0.0), alpha=float(meta.get("alpha", 1.0)),
                    parts=tensors, info=info, folder=str(folder))
    except (TypeError, ValueError) as err:
        raise HeadError(f"{name}: {err}") from None
    if checkpoint is not None:
        head.check_checkpoint(checkpoint)
    return head


# -- writing a folder whole ----------------------------------------------------------------------------------


def replace_folder(folder: str | os.PathLike, files: Mapping[str, bytes], *, carry: Sequence[str] = ()) -> Path:
    """Make ``folder`` hold exactly ``files`` (plus the ``carry`` files it already holds), all at once.

    Everything else in ``folder`` is deleted: a caller that writes into a folder the user named checks first
    that it holds nothing of the user's (``fit`` refuses a folder with other files:
    :func:`audioclip.fit.folder.stray_entry`).

    The files are written into a new folder beside it (``.NAME.tmp-*``), which then takes the old one's place:
    an exchange of the two names in one step where the system has one (Linux ``renameat2``), else two renames.
    A process killed before that step leaves ``folder`` as it was (and a temporary folder, removed by the next
    call); readers never see a mixture of the old and the new files.
    """
    folder = Path(folder)
    parent = folder.parent if str(folder.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{folder.name}.tmp-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", suffix=f"-{os.getpid()}", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for name, data in files.items():
            write_bytes_atomic(tmp / name, data)
        for name in carry:
            source = folder / name
            if source.is_file() and not (tmp / name).exists():
                try:
                    os.link(source, tmp / name)
                except OSError:  # another file system, or links not allowed: a copy
                    shutil.copy2(source, tmp / name)
        if not folder.exists():
            os.rename(tmp, folder)
        elif _exchange(tmp, folder):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old content
        else:
            old = parent / f".{folder.name}.old-{os.getpid()}"
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        fsync_folder(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _alive(pid_text: str) -> bool:
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's process of that number: leave its folder alone
    return True


def _umask() -> int:
    from ..io import current_umask

    return current_umask()


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot; two renames instead
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))
