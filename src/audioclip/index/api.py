"""``audioclip.Index``: a searchable, incrementally updated index of media files."""

from __future__ import annotations

import datetime
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AudioclipError
from .base import IndexLockedError, IndexStoreError, VectorStore, writer_lock
from .db import open_store
from .indexing import IndexReport, Progress, update_index
from .lance import LanceStore, lance_message
from .records import FileRecord
from .search import DEFAULT_MARGIN, SOURCES, SearchHit, rank
from .weights import architecture_image_size, built_to_identify, bundled, source_of

if TYPE_CHECKING:
    from ..media.files import DecodeOptions

__all__ = ["Index", "IndexLockedError", "QueryError"]

FORMAT = 1
DEFAULT_CHECKPOINT = "full"
_OPTION_KEYS = ("window", "hop", "mono", "video_frames")


class QueryError(AudioclipError, ValueError):
    """A query that cannot be run: an unreadable query file, no query, a bad filter."""


class Index:
    """An index of audio, image and video files, searchable by text, sound or picture.

    >>> index = Index.open("library.lance", checkpoint="full")   # created on first add
    >>> index.add(["~/sounds", "~/pictures"])                    # again later: only what changed
    >>> for hit in index.search("a dog barking in the rain", k=5, modality="audio"):
    ...     print(f"{hit.score:.3f} {hit.path} {hit.start}-{hit.end}")

    The model is loaded on first use (indexing, or a text/audio/image query),
    from ``checkpoint``/``config``, by default those the index was built
    with. An index holds one checkpoint's vectors: opening it with another
    raises :class:`IndexStoreError`. ``store`` plugs in another
    :class:`VectorStore` (``db`` is then only used in messages).
    """

    def __init__(self, store: VectorStore, *, db: str, checkpoint: str | None = None, config: str | None = None,
                 model=None, model_id: str | None = None, device: str | None = None, precision: str = "fp32",
                 cache_dir: str | None = None, offline: bool | None = None,
                 before_model_load: Callable[[], None] | None = None):
        self.store = store
        self._before_model_load = before_model_load  # the command line's lighter imports (cli/startup.py)
        self.db = db
        self._checkpoint, self._config = checkpoint, config
        self._model, self._model_id = model, model_id
        self._device, self._precision = device, precision
        self._cache_dir, self._offline = cache_dir, offline
        self._model_lock = threading.Lock()
        self._model_path = None
        self._unverified = None  # an architecture whose id was taken from the index: checked once it is built
        self._source = None  # how to load the model again: a registry name or an absolute path
        if model is not None and model_id is None and checkpoint is None:
            raise ValueError("with model=, give checkpoint= (the file or name it was loaded from) or model_id= "
                             "(a name for its weights): the index records which weights made its vectors")
        meta = self.meta
        if meta and model_id is not None and model_id != meta["checkpoint"]:
            raise self._other_checkpoint(model_id)

    @classmethod
    def open(cls, db: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
             config: str | None = None, create: bool = True, **kwargs) -> Index:
        """Open the index ``db`` (made on first :meth:`add` when ``create``): a LanceDB folder,
        ``milvus:FILE.db`` (Milvus Lite) or ``http://HOST:19530`` (a Milvus server; see ``open_store``).

        Other keyword arguments: ``model`` (an AudioCLIP already loaded from
        ``checkpoint``, to skip loading it again; or, with ``model_id``, any
        model, its vectors recorded under that name), ``device``,
        ``precision``, ``cache_dir``, ``offline``, ``store``,
        ``before_model_load`` (called once, just before the model is loaded).
        """
        db = os.fspath(db)
        store = kwargs.pop("store", None) or open_store(db, create=create)
        index = cls(store, db=db, checkpoint=None if checkpoint is None else os.fspath(checkpoint), config=config,
                    **kwargs)
        if checkpoint is not None and index.meta:
            index.model_id  # resolve and compare now: a clear error before any work
        return index

    # -- metadata and model ----------------------------------------------------------

    @property
    def meta(self) -> dict | None:
        """What the index was built with: checkpoint id and source, config, decoding options."""
        return self.store.read_meta()

    def _other_checkpoint(self, model_id: str) -> IndexStoreError:
        meta = self.meta
        return IndexStoreError(
            f"{self.db}: this index holds vectors of checkpoint {meta['checkpoint']} "
            f"(from {meta.get('checkpoint_source')!r}); the model given is {model_id}. Vectors of different "
            f"checkpoints cannot be compared: use the index's checkpoint, or build a new index (--db NEW).")

    def _model_spec(self) -> tuple[str, str]:
        meta = self.meta or {}
        checkpoint = self._checkpoint or meta.get("checkpoint_source") or DEFAULT_CHECKPOINT
        config = self._config or meta.get("config")  # None: recognised from the file
        return checkpoint, config

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            from .. import checkpoints, factory

            checkpoint, _ = self._model_spec()
            meta = self.meta
            named = next((w for n, w in checkpoints.REGISTRY.items() if n.lower() == str(checkpoint).lower()), None)
            if named is not None and meta and checkpoints.file_checkpoint_id("", named) != meta["checkpoint"]:
                raise self._other_checkpoint(checkpoints.file_checkpoint_id("", named))  # before any download
            try:
                built = None
                if (meta and self._model is None and str(checkpoint) == meta.get("checkpoint_source")
                        and factory.describe_source(checkpoint).kind == "architecture"
                        and str(meta["checkpoint"]).startswith(f"{checkpoint}@random-")):
                    # The index's own architecture: its seeded weights give the id the index recorded, so a run
                    # with nothing to embed need not build the model; the id is checked when it is built.
                    self._model_id, self._model_path, self._unverified = meta["checkpoint"], None, str(checkpoint)
                    return self._model_id
                if built_to_identify(checkpoint):
                    built, path = self._model or self._build(checkpoint), None
                    model_id = factory.checkpoint_id(built)
                else:
                    path, weights = checkpoints.resolve(checkpoint, cache_dir=self._cache_dir,
                                                        offline=self._offline)
                    model_id = checkpoints.file_checkpoint_id(path, weights)  # hashes the file (a regular one only)
                    self._source = weights.name if weights is not None else str(Path(path).resolve())
            except checkpoints.CheckpointError as err:
                if self._checkpoint is None and self.meta:
                    raise IndexStoreError(f"{self.db}: the index was built with checkpoint {checkpoint!r}, "
                                          f"which cannot be loaded ({err}); pass --checkpoint") from None
                raise
            if meta and model_id != meta["checkpoint"]:
                raise self._other_checkpoint(model_id)
            self._model_id, self._model_path = model_id, path
            if built is not None:
                kind = factory.describe_source(checkpoint).kind
                self._source = str(Path(checkpoint).resolve()) if kind == "folder" else str(checkpoint)
                self._model = built  # the model the index then uses
        return self._model_id

    def _build(self, checkpoint: str):
        """The model of weights whose id is known only once built: an architecture's (seeded) random weights,
        a Hub model."""
        from ..factory import create_model

        if self._before_model_load is not None:
            self._before_model_load()
        _, config = self._model_spec()
        return create_model(checkpoint, config=config, device=self._device or "auto", audio_mode="default",
                            cache_dir=self._cache_dir, offline=self._offline)

    @property
    def model(self):
        """The AudioCLIP model, loaded on first use."""
        with self._model_lock:
            if self._model is None:
                self.model_id  # checks the checkpoint before the (slow) load (an architecture's: builds it)
            if self._model is None and self._unverified is not None:
                from ..factory import checkpoint_id

                built = self._build(self._unverified)
                if checkpoint_id(built) != self._model_id:  # another PyTorch may draw other random weights
                    raise self._other_checkpoint(checkpoint_id(built))
                self._model, self._unverified = built, None
            if self._model is None:
                if self._before_model_load is not None:
                    self._before_model_load()
                from ..factory import create_model

                _, config = self._model_spec()
                self._model = create_model(self._model_path, config=config, device=self._device or "auto",
                                           audio_mode="default")
        return self._model

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model computes: a caller embedding in steps holds it for one model call at a time."""
        return self._model_lock

    @property
    def precision(self) -> str:
        """The precision queries are embedded in ("fp32", "bf16", "fp16")."""
        return self._precision

    def decode_options(self) -> DecodeOptions:
        """How a query file is decoded: the index's own options (a new index: the model's picture size)."""
        from ..media.files import DecodeOptions

        return self._options() if self.meta else DecodeOptions(image_size=self.model.visual.image_size)

    def _options(self, given: dict | None = None) -> DecodeOptions:
        """The decoding options: the index's own (fixed at creation); ``given`` ones must agree."""
        from ..media.files import DecodeOptions

        meta, given = self.meta or {}, dict(given or {})
        stored = {k: meta[k] for k in _OPTION_KEYS if k in meta}
        for key, value in given.items():
            if value is not None and key in stored and stored[key] != value:
                raise IndexStoreError(f"{self.db}: the index was built with {key}={stored[key]!r}; this run asks for "
                                      f"{value!r}. Use the same, or build a new index (--db NEW).")
        merged = {**{k: v for k, v in given.items() if v is not None}, **stored}
        return DecodeOptions(image_size=self._image_size(), **merged)

    def _image_size(self) -> int:
        """The model's input picture size (pixels), without loading the model when it can be known.

        From the metadata (recorded since indexes store it), the model if
        already loaded, or the architecture's bundled config (a config name,
        or registered weights); only an older index built from a checkpoint
        file with no config name needs the model loaded (once: ``add`` then
        records the size).
        """
        meta = self.meta or {}
        if meta.get("image_size"):
            return int(meta["image_size"])
        if self._model is not None:
            return int(self._model.visual.image_size)
        checkpoint, config = self._model_spec()
        size = architecture_image_size(config) if isinstance(config, str) else None
        if size is None:
            from .. import checkpoints

            weights = checkpoints.lookup(str(checkpoint))
            architecture = weights.architecture if weights is not None else str(checkpoint)
            size = architecture_image_size(architecture) if architecture in bundled() else None
        return size if size is not None else int(self.model.visual.image_size)

    # -- writing -----------------------------------------------------------------------

    def _writer(self):
        return writer_lock(self.store, self.db)  # one writer at a time

    def add(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, batch_size: int = 16,
            workers: int = 0, flush_every: int = 32, retry_failed: bool = False, prune: bool = False,
            window: float | None = None, hop: float | None = None, mono: bool | None = None,
            video_frames: str | None = None, progress: Progress | None = None, on_plan=None,
            log=None) -> IndexReport:
        """Bring the index up to date with ``paths`` (files and folders, searched recursively).

        New files are embedded, changed ones embedded again, files under
        ``paths`` that are gone are dropped (``prune``: gone files anywhere).
        Files that failed before and have not changed are skipped unless
        ``retry_failed``. Decoding options are fixed at the first add. At the end the store is
        tidied and its ANN index built or refreshed when needed (``log`` gets a line on what it did).

        The model is loaded only when a file must be embedded (and on the
        first add, whose metadata records its size): a run with nothing new,
        or with only touched files, never loads it. The checkpoint is still
        checked against the index's (``model_id``, a cached hash).
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.path.expanduser(os.fspath(p)) for p in paths]
        with self._writer():
            meta = self.meta
            self.model_id  # checked before anything is written: an index never mixes checkpoints
            if meta is None:
                meta = self._create_meta(dict(window=window, hop=hop, mono=mono, video_frames=video_frames))
            options = self._options(dict(window=window, hop=hop, mono=mono, video_frames=video_frames))
            report = update_index(self.store, self._model, paths, options=options, batch_size=batch_size,
                                  workers=workers, precision=self._precision, flush_every=flush_every,
                                  retry_failed=retry_failed, prune=prune, progress=progress, on_plan=on_plan,
                                  load_model=lambda: self.model, paths_resolved=meta.get("paths") == "resolved")
            return self._finish(meta, options, report, log)

    def _finish(self, meta: dict, options: DecodeOptions, report: IndexReport, log) -> IndexReport:
        # Record what later runs can then skip: the picture size (older indexes lack it; finding it
        # may have needed the model), and that every stored path is resolved.
        later = {}
        if not meta.get("image_size"):
            later["image_size"] = options.image_size
        if meta.get("paths") != "resolved" and report.unresolved == 0:
            later["paths"] = "resolved"
        # Every file is committed now: what follows only tidies (records hints, compacts, builds the ANN
        # index). A failure there (a full disk) must not lose or deny the work done: the report says it.
        try:
            if later:
                self.store.write_meta({**meta, **later})
            if not (report.indexed_now or report.removed or report.failed):
                # Nothing written: nothing to compact, the ANN index as fresh as the last run left it. (A
                # killed run's leftovers wait for the next run that writes; searches stay exact meanwhile.)
                return report
            if log is not None and isinstance(self.store, LanceStore):
                self.store.optimize(log=log)
            else:
                self.store.optimize()
        except (OSError, RuntimeError, IndexStoreError) as err:
            report.maintenance_error = (f"the files are indexed, but tidying the index afterwards failed "
                                        f"({lance_message(err)}); searches give the same results (maybe more "
                                        "slowly); the next run that adds or changes files tidies it again")
            warnings.warn(f"{self.db}: {report.maintenance_error}", RuntimeWarning, stacklevel=3)
        return report

    def add_embedded(self, embeddings, *, flush_every: int = 32, progress: Progress | None = None,
                     on_plan=None, log=None) -> IndexReport:
        """Index the files of an embed output without embedding them again: its vectors are stored as they are.

        ``embeddings``: what :func:`audioclip.read_embeddings` returns for any
        output of ``audioclip embed`` or :func:`audioclip.embed_to` (Parquet,
        ``.npy``, ``.jsonl``, a folder of parts, a Ray job's). The result is
        the index that :meth:`add` of the same files gives: the same rows and
        vectors. The output must hold the index's checkpoint (a new index:
        ``checkpoint=`` if given, else the one the output names, when it is
        registered weights or an architecture) and its decoding options (a
        new index takes the output's); otherwise :class:`IndexStoreError`.
        Files are checked as :meth:`add` checks them: unchanged ones are
        skipped; a file modified after the output was made, or gone, is
        reported as failed (index it from disk with :meth:`add`).
        """
        from .indexing import column_matrix, embedded_files, timestamp_ns

        table, settings = embeddings
        settings = dict(settings)
        made_with = settings.get("checkpoint") or (table["checkpoint"][0].as_py() if table.num_rows else None)
        if not made_with:
            raise IndexStoreError("the embeddings name no checkpoint: they cannot be indexed")
        given = {"window": settings.get("window_s"), "mono": settings.get("mono"),
                 "video_frames": settings.get("video_frames"),
                 "hop": None if settings.get("hop_s") in (None, settings.get("window_s")) else settings["hop_s"]}
        with self._writer():
            meta = self.meta
            if meta and meta["checkpoint"] != made_with:
                raise self._other_output(made_with)
            if meta is None and self._checkpoint is None:
                self._checkpoint = source_of(settings)
            if self.model_id != made_with:
                raise self._other_output(made_with)
            if meta is None:
                meta = self._create_meta(given, dim=settings.get("embedding_dim"),
                                         image_size=settings.get("image_size"),
                                         architecture=settings.get("architecture"))
            options = self._options(given)
            if settings.get("image_size") and int(settings["image_size"]) != options.image_size:
                raise IndexStoreError(f"{self.db}: the index was built with pictures of {options.image_size} px; "
                                      f"the embeddings with {settings['image_size']} px")
            files = embedded_files(table, embeddings.matrix() if hasattr(embeddings, "matrix")
                                   else column_matrix(table))
            created = timestamp_ns(settings.get("created"))
            paths, late = [], []
            for path in files:
                try:
                    st = os.stat(path)
                except OSError:
                    paths.append(path)  # gone: reported (and dropped from the index) as add does
                    continue
                (late if created is not None and st.st_mtime_ns > created else paths).append(path)
            report = update_index(self.store, None, paths, options=options, flush_every=flush_every,
                                  progress=progress, on_plan=on_plan, embedded=files,
                                  paths_resolved=meta.get("paths") == "resolved")
            for path in late:
                reason = "modified after the embeddings were made; index it from the file"
                report.failed.append((path, reason))
                if progress is not None:
                    progress("failed", path, reason)
            return self._finish(meta, options, report, log)

    def _other_output(self, made_with: str) -> IndexStoreError:
        meta = self.meta or {}
        ours = f"the index's is {meta['checkpoint']}" if meta else f"the checkpoint given is {self.model_id}"
        return IndexStoreError(
            f"{self.db}: the embeddings hold vectors of checkpoint {made_with}; {ours}. Vectors "
            "of different checkpoints cannot be compared: index them into another index (--db NEW), or "
            "embed the files again with the index's checkpoint.")

    def _create_meta(self, given: dict, dim: int | None = None, image_size: int | None = None,
                     architecture: str | None = None) -> dict:
        """The metadata of a new index: checkpoint, architecture sizes, decoding options.

        Loads the model, unless ``dim`` and ``image_size`` are known (an embed output's).
        """
        from ..media.files import DecodeOptions

        model = self._model if dim and image_size else self.model
        model_id = self.model_id
        if model is not None:
            dim, image_size = model.embed_dim, int(model.visual.image_size)
            architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        defaults = DecodeOptions(image_size=int(image_size), **{k: v for k, v in given.items() if v is not None})
        _, config = self._model_spec()
        meta = {
            "format": FORMAT, "checkpoint": model_id, "checkpoint_source": self._source,
            "config": config if isinstance(config, str) else None, "dim": int(dim),
            "architecture": architecture,
            "image_size": defaults.image_size, "window": defaults.window, "hop": defaults.hop,
            "mono": defaults.mono, "video_frames": defaults.video_frames, "paths": "resolved",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self.store.write_meta(meta)
        return meta

    update = add

    def remove(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
        """Drop files (and everything under folders) from the index, whether or not they still exist."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        given = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        # Resolved like the paths the index stores, and as given: an older index stored them unresolved.
        targets = set(given) | {os.path.realpath(p) for p in given}
        prefixes = tuple(os.path.join(t, "") for t in targets)
        with self._writer():
            gone = [r for p, r in self.store.files().items() if p in targets or p.startswith(prefixes)]
            self.store.delete_files([r.file_id for r in gone])
            return [r.path for r in gone]

    # -- reading ----------------------------------------------------------------------------

    def files(self) -> list[FileRecord]:
        return sorted(self.store.files().values(), key=lambda r: r.path)

    def get(self, file_id: int) -> FileRecord | None:
        """The indexed file with this id, or None."""
        return self.store.get_file(int(file_id))

    def __len__(self) -> int:
        return len(self.store.files())

    def stats(self) -> dict:
        files = self.store.files()
        by_source: dict[str, int] = {}
        for r in files.values():
            by_source[r.source] = by_source.get(r.source, 0) + 1
        meta = self.meta or {}
        return {"files": len(files), "vectors": self.store.count_rows(), "by_source": by_source,
                "failed": len(self.store.failures()), "checkpoint": meta.get("checkpoint")}

    def embed_query(self, text: str | None = None, *, audio: str | os.PathLike | None = None,
                    image: str | os.PathLike | None = None) -> np.ndarray:
        """The unit query vector of a text, a sound file or a picture file (exactly one)."""
        given = [x for x in (text, audio, image) if x is not None]
        if len(given) != 1:
            raise QueryError("give exactly one query: a text, an audio file or an image file")
        model = self.model
        if text is not None:
            if not str(text).strip():
                raise QueryError("the text query is empty")
            import torch

            with self._model_lock, torch.inference_mode():
                vector = torch.nn.functional.normalize(model.encode_text([str(text)]).float(), dim=-1)[0]
            return vector.cpu().numpy()
        modality, path = ("audio", audio) if audio is not None else ("image", image)
        path = os.fspath(path)
        from ..inference import embed_files

        options = self.decode_options()
        with self._model_lock:
            result = next(iter(embed_files(model, [path], precision=self._precision, options=options)))
        if not result.ok:
            raise QueryError(f"{path}: {result.error}")
        vector = result.pooled(modality)
        if vector is None:
            other = "--image" if modality == "audio" else "--audio"
            article = "an" if (result.source or "x")[0] in "aeiou" else "a"
            raise QueryError(f"{path}: has no {'sound' if modality == 'audio' else 'picture'} "
                             f"(it is {article} {result.source} file; try {other})")
        return vector.numpy()

    def search(self, text: str | None = None, *, audio: str | os.PathLike | None = None,
               image: str | os.PathLike | None = None, vector: np.ndarray | None = None, k: int = 10,
               modality: str | Sequence[str] | None = None, margin: float = DEFAULT_MARGIN,
               exact: bool = False) -> list[SearchHit]:
        """The ``k`` files that best match a text, a sound file, a picture file or a unit vector.

        ``modality`` keeps only files of that kind ("audio", "image", "video",
        or a list of them). Returns :class:`SearchHit` s, best first; an
        empty index gives ``[]``. ``exact`` skips the ANN index (if any).
        """
        sources = [modality] if isinstance(modality, str) else list(modality) if modality else None
        for s in sources or ():
            if s not in SOURCES:
                raise QueryError(f"modality must be one of {', '.join(SOURCES)}, got {s!r}")
        if vector is None:
            vector = self.embed_query(text, audio=audio, image=image)
        elif any(x is not None for x in (text, audio, image)):
            raise QueryError("give either vector= or a text/audio/image query, not both")
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        meta = self.meta
        if meta and vector.shape[0] != meta["dim"]:
            raise QueryError(f"query vector has {vector.shape[0]} dimensions; the index has {meta['dim']}")
        return rank(self.store, vector, k=k, sources=sources, margin=margin, exact=exact)

    def __repr__(self) -> str:
        return f"Index({self.db!r})"
