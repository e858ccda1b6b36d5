"""AudioCLIP as three ONNX models, and an ONNX Runtime backend that runs them.

:func:`export_onnx` writes into a folder

- ``audio.onnx``: ``waveform`` float32 ``(batch, channels, samples)`` at 44.1 kHz, all
  three axes dynamic -> ``embedding`` float32 ``(batch, embed_dim)``, the unnormalised
  vector of ``AudioCLIP.encode_audio`` (channels embedded separately and summed
  before the projection, as the original does);
- ``image.onnx``: ``pixel_values`` float32 ``(batch, 3, size, size)``, CLIP-normalised
  -> ``embedding`` as ``encode_image``;
- ``text.onnx``: ``input_ids`` int64 ``(batch, context_length)`` CLIP BPE ids ->
  ``embedding`` as ``encode_text``;
- ``audioclip-onnx.json``: the architecture, embedding size, image size, context
  length, the three logit scales, the weights' identity and the sha256 of each
  graph, so that the folder alone is a usable model (:class:`OnnxAudioCLIP`),
  and a graph copied in from another export is refused rather than run under
  this export's checkpoint id.

The graphs come from PyTorch's ONNX exporter (``torch.export`` underneath), are
simplified by onnxscript's optimizer and checked by ``onnx.checker`` with full shape inference;
every model is then run once in ONNX Runtime and compared with PyTorch before
the folder counts as written. The exact path is exported, with the fbsp
kernels materialised by PyTorch (``freeze_fbsp_kernel``); a model already
transformed to a fast audio head (``fused``, ``bf16``, ``int8``) is refused.

Needs the ``[onnx]`` extra (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import FileReadError, atomic_path, check_regular_file, read_text_bounded, write_text_atomic
from ..model import AudioCLIP, ESResNeXtFbsp, freeze_fbsp_kernel
from ..model.tokenizer import tokenize
from ..util import sha256_file
from ..errors import AudioclipError

__all__ = ["ONNX_FILES", "OnnxAudioCLIP", "OnnxExportError", "export_onnx", "read_export_meta"]

ONNX_FILES = {"audio": "audio.onnx", "image": "image.onnx", "text": "text.onnx"}
META_FILE = "audioclip-onnx.json"
FORMAT = 2  # 2: the graphs' sha256 recorded (format 1 exports are refused: export again)
MAX_META_BYTES = 1 << 20
MAX_GRAPH_BYTES = 1 << 31  # protobuf's limit for one ONNX file without external data


class OnnxExportError(AudioclipError, RuntimeError):
    """The export failed, or its result does not compute what the PyTorch model computes."""


# -- what is exported -------------------------------------------------------------------


class _Audio(nn.Module):
    """``encode_audio`` without the input checks (they read values, which a graph cannot)."""

    def __init__(self, head: ESResNeXtFbsp):
        super().__init__()
        self.head = head

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(waveform)


class _AudioWithHead(nn.Module):
    """The audio graph with a fitted head: ``(embedding, probabilities)`` (:meth:`audioclip.heads.Head.as_module`)."""

    def __init__(self, head: ESResNeXtFbsp, classifier: nn.Module):
        super().__init__()
        self.head = head
        self.classifier = classifier

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.head(waveform)
        return embedding, self.classifier(embedding)


class _Image(nn.Module):
    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


class _Text(nn.Module):
    def __init__(self, model: AudioCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # open_clip's CLIP.encode_text: ours only adds tokenising and input checks
        return super(AudioCLIP, self.model).encode_text(input_ids)


def _check_exportable(model: nn.Module) -> None:
    if not isinstance(model, AudioCLIP):
        raise TypeError(f"export_onnx: expected an AudioCLIP, got {type(model).__name__}")
    if not isinstance(model.audio, ESResNeXtFbsp):
        raise TypeError(
            "export_onnx: the audio head is a transformed inference head "
            f"({type(model.audio).__name__}); export the model before audio_mode transforms"
        )


def _examples(model: AudioCLIP) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = model.visual.image_size
    return {
        # Every dynamic axis a different size (equal sizes would be taken for one
        # symbol), and long enough (3 s) that no axis of the trunk shrinks to 1,
        # which torch.export would fix as a constant.
        "audio": 0.2 * torch.rand(2, 3, 3 * model.audio.config.sample_rate, generator=g) - 0.1,
        "image": torch.randn(2, 3, size, size, generator=g),
        "text": tokenize(["a dog barking", "rain on a window"], context_length=model.context_length),
    }


def _export_one(module: nn.Module, example: torch.Tensor, input_name: str, dims: Sequence[int], path: Path) -> None:
    import onnx
    import onnxscript.optimizer

    auto = torch.export.Dim.AUTO
    spec = {0: auto} if list(dims) == [0] else {d: auto for d in dims}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=((spec,)))
        onnx_program = torch.onnx.export(program, input_names=[input_name], dynamo=True, verbose=False)
    # Name the output "embedding"; a value inside may already carry that name (the
    # text head's token embedding), so it is renamed first.
    graph_ir = onnx_program.model.graph
    outputs = list(graph_ir.outputs)
    names = ["embedding", "probabilities"][:len(outputs)]  # a head's class probabilities second
    for node in graph_ir:
        for value in node.outputs:
            if value.name in names and value not in outputs:
                value.name = f"{value.name}_inner"
    for value, name in zip(outputs, names):
        value.name = name
    # onnxscript's optimizer (constant folding, dead code, redundant casts and
    # reshapes); onnxslim recurses without end on the text head's graph
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    level, folding.level = folding.level, logging.ERROR  # its notes on ops it leaves alone
    try:
        graph = onnxscript.optimizer.optimize(onnx_program.model_proto)
    finally:
        folding.setLevel(level)
    onnx.checker.check_model(graph, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(graph, os.fspath(tmp))


def _compare(session, name: str, feed: torch.Tensor, expected: torch.Tensor, what: str, output: str = "embedding",
             absolute: bool = False) -> float:
    got = torch.from_numpy(session.run([output], {name: feed.numpy()})[0])
    if absolute:  # probabilities: within 1e-4 each, whatever the largest
        error = (got - expected).abs().max().item()
        if got.shape != expected.shape or not error <= 1e-4:
            raise OnnxExportError(f"{what}: ONNX Runtime's {output} differ from PyTorch's by {error:.3g}")
        return error
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item() / (scale or 1.0)
    if got.shape != expected.shape or not error <= 1e-4:
        raise OnnxExportError(f"{what}: ONNX Runtime differs from PyTorch by {error:.3g} of scale "
                              f"(shape {tuple(got.shape)} vs {tuple(expected.shape)})")
    return error


def export_onnx(model: AudioCLIP, out_dir: str | os.PathLike, *, checkpoint_id: str | None = None,
                progress=None, head=None) -> dict[str, Path]:
    """Write ``audio.onnx``, ``image.onnx``, ``text.onnx`` and their metadata into ``out_dir``.

    Each graph is run in ONNX Runtime on the export's example inputs and on a
    second input of other sizes, and must equal the PyTorch model within 1e-4
    of its largest magnitude, or :class:`OnnxExportError` is raised. Files are
    written atomically; returns ``{"audio": path, "image": path, "text": path,
    "meta": path}``. ``progress(message)`` is called before each step.

    ``head`` (a :class:`audioclip.heads.Head` fitted on this checkpoint, or its folder): the audio graph also
    outputs ``probabilities`` ``(batch, classes)``, checked against PyTorch to 1e-4; its labels, threshold and
    background class are in the metadata under ``"head"``.
    """
    import onnxruntime as ort

    _check_exportable(model)
    fitted_head = None
    if head is not None:
        from ..heads import Head, load_head

        fitted_head = head if isinstance(head, Head) else load_head(head)
        fitted_head.check_checkpoint(checkpoint_id)
    say = progress or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The metadata goes last: without it a half-replaced folder does not load as a model.
    (out / META_FILE).unlink(missing_ok=True)
    model = model.eval()
    # The fbsp kernels go into the graph as constants computed by PyTorch: computed
    # by ONNX Runtime's own sin/cos/pow they move low-power bins by decibels (the
    # front end is ill-conditioned in float32, see audioclip.model.fbsp).
    head = freeze_fbsp_kernel(model.audio)
    # the trunk runs whole batches in the graph; chunks are a CPU cache trick of eager mode
    head.trunk_chunk_frames = None
    if True:
        examples = _examples(model)
        classifier = None
        if fitted_head is not None:
            classifier = fitted_head.as_module().eval()
        modules = {"audio": _Audio(head) if classifier is None else _AudioWithHead(head, classifier),
                   "image": _Image(model), "text": _Text(model)}
        inputs = {"audio": ("waveform", (0, 1, 2)), "image": ("pixel_values", (0,)), "text": ("input_ids", (0,))}
        g = torch.Generator().manual_seed(1)
        size = model.visual.image_size
        others = {  # other batch sizes and lengths than the export saw
            "audio": 0.2 * torch.rand(3, 2, model.audio.config.sample_rate, generator=g) - 0.1,
            "image": torch.randn(1, 3, size, size, generator=g),
            "text": tokenize(["thunder", "a siren", "birds"], context_length=model.context_length),
        }
        paths = {}
        for modality, module in modules.items():
            name, dims = inputs[modality]
            path = out / ONNX_FILES[modality]
            say(f"exporting {path.name}")
            _export_one(module, examples[modality], name, dims, path)
            session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
            with torch.no_grad():
                for feed in (examples[modality], others[modality]):
                    expected = module(feed)
                    if isinstance(expected, tuple):
                        _compare(session, name, feed, expected[1], path.name, "probabilities", absolute=True)
                        expected = expected[0]
                    _compare(session, name, feed, expected, path.name)
            paths[modality] = path

    info = getattr(model, "pretrained_cfg", {}) or {}
    meta = {
        "format": FORMAT,
        "architecture": info.get("architecture"),
        "checkpoint": checkpoint_id,
        "embed_dim": model.embed_dim,
        "image_size": model.visual.image_size,
        "context_length": model.context_length,
        "sample_rate": model.audio.config.sample_rate,
        "logit_scales": {k: float(v.detach()) for k, v in model.logit_scales().items()},
        "files": ONNX_FILES,
        "sha256": {modality: _file_sha256(paths[modality], modality) for modality in ONNX_FILES},
    }
    if fitted_head is not None:
        meta["head"] = {"labels": fitted_head.labels, "background": fitted_head.background,
                        "threshold": fitted_head.threshold, "activation": fitted_head.activation,
                        "checkpoint": fitted_head.checkpoint}
    paths["meta"] = out / META_FILE
    write_text_atomic(paths["meta"], json.dumps(meta, indent=2) + "\n")
    return paths


# -- running them ------------------------------------------------------------------------


def _file_sha256(path: Path, what: str = "ONNX") -> str:
    """sha256 of a graph file (hex), read in blocks; a FIFO or device is refused, not read."""
    check_regular_file(path, MAX_GRAPH_BYTES, what=f"{what} graph")
    return sha256_file(path)


def read_export_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an export folder, read bounded and checked (types, ranges), or :class:`OnnxExportError`.

    ``sha256`` must name the three graphs (exports written before it was recorded are refused: export
    again). Nothing else in the folder is read.
    """
    meta_path = Path(folder) / META_FILE

    def bad(problem: str) -> OnnxExportError:
        return OnnxExportError(f"{meta_path}: not an ONNX export of audioclip ({problem})")

    try:
        meta = json.loads(read_text_bounded(meta_path, MAX_META_BYTES, what="ONNX export metadata"))
    except FileReadError as e:
        raise bad(str(e).removeprefix(f"{meta_path}: ")) from None
    except ValueError as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise bad(f"a JSON object expected, found {type(meta).__name__}")
    for key, low, high in (("embed_dim", 1, 8192), ("context_length", 1, 1024), ("image_size", 16, 1024)):
        if type(meta.get(key)) is not int or not low <= meta[key] <= high:
            raise bad(f"{key!r} is {meta.get(key)!r}, not a whole number from {low} to {high}")
    scales = meta.get("logit_scales")
    if not isinstance(scales, dict) or not all(isinstance(k, str) and type(v) in (int, float)
                                               for k, v in scales.items()):
        raise bad("'logit_scales' is not an object of numbers")
    for key in ("checkpoint", "architecture"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key!r} is not a string")
    digests = meta.get("sha256")
    if digests is None:
        raise bad("it records no sha256 of its graphs (written by an older audioclip): export it again")
    if not isinstance(digests, dict) or set(digests) != set(ONNX_FILES) or not all(
            isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in digests.values()):
        raise bad("'sha256' does not give the three graphs' hashes")
    return meta


class _Visual:
    def __init__(self, image_size: int):
        self.image_size = image_size


class OnnxAudioCLIP:
    """The three exported models in ONNX Runtime, with the encoders' call shapes.

    ``encode_audio``, ``encode_image`` and ``encode_text`` take and return what
    :class:`~audioclip.model.AudioCLIP`'s do (torch tensors, unnormalised
    vectors), so :func:`audioclip.embed_files`, :func:`audioclip.classify` and the
    command line run on it unchanged. Sessions are opened on first use.
    ``providers`` defaults to the CPU.
    """

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None):
        self.folder = Path(folder)
        self.meta: dict[str, Any] = read_export_meta(self.folder)
        missing = [f for f in ONNX_FILES.values() if not (self.folder / f).exists()]
        if missing:
            raise OnnxExportError(f"{self.folder}: missing {', '.join(missing)}; export again")
        # Each graph must be the one the export wrote: the checkpoint id below comes from the metadata, so a
        # graph copied in from another export would otherwise write its vectors under this one's id.
        for modality, name in ONNX_FILES.items():
            try:
                digest = _file_sha256(self.folder / name, modality)
            except (FileReadError, OSError) as e:
                raise OnnxExportError(f"{self.folder / name}: cannot be read ({e})") from None
            if digest != self.meta["sha256"][modality]:
                raise OnnxExportError(f"{self.folder / name}: not the graph this export wrote (its sha256 "
                                      f"{digest[:16]}... differs from the {META_FILE}'s); export again")
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self.embed_dim = int(self.meta["embed_dim"])
        self.context_length = int(self.meta["context_length"])
        self.visual = _Visual(int(self.meta["image_size"]))
        self.image_size = self.visual.image_size  # as AudioCLIP's: load_image(path, model=...) follows it
        self.sample_rate = int(self.meta.get("sample_rate", 44100))
        self.pretrained_cfg = {"architecture": self.meta.get("architecture"), "backend": "onnxruntime",
                               "checkpoint_id": self.meta.get("checkpoint") or self._content_id()}
        self.training = False

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _content_id(self) -> str:
        """``onnx@<sha256 of the three graphs, 16 hex>``, for an export that does not name its weights."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(ONNX_FILES.values()):  # the graphs' own hashes, verified on load
            sha256_file(self.folder / name, digest)
        return f"onnx@{digest.hexdigest()[:16]}"

    def eval(self) -> OnnxAudioCLIP:
        return self

    def to(self, device) -> OnnxAudioCLIP:
        """Sessions run where their providers say; only the CPU is accepted here."""
        if torch.device(device).type != "cpu":
            raise ValueError("the ONNX Runtime backend runs on its providers; pass device='cpu'")
        return self

    def _session(self, modality: str):
        if modality not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            path = os.fspath(self.folder / ONNX_FILES[modality])
            self._sessions[modality] = ort.InferenceSession(path, options, providers=self.providers)
        return self._sessions[modality]

    def _run(self, modality: str, name: str, array) -> torch.Tensor:
        out = self._session(modality).run(["embedding"], {name: array})[0]
        return torch.from_numpy(out)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """As :meth:`AudioCLIP.encode_audio`: ``(batch, channels, samples)`` or ``(batch, samples)``."""
        from ..model.audioclip import check_audio_input

        audio = check_audio_input(audio, torch.device("cpu"))
        return self._run("audio", "waveform", audio.contiguous().numpy())

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        size = self.visual.image_size
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"encode_image: expected shape (batch, 3, {size}, {size}), got {shape}")
        out = self._run("image", "pixel_values", image.detach().float().cpu().contiguous().numpy())
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        from ..model.audioclip import check_text_input

        if not isinstance(text, torch.Tensor):
            text = tokenize(check_text_input(text), context_length=self.context_length)
        out = self._run("text", "input_ids", text.to(torch.int64).cpu().contiguous().numpy())
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def logit_scales(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v) for k, v in self.meta["logit_scales"].items()}
