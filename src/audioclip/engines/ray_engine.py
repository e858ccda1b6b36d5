"""The ``ray`` engine: ``embed`` as a Ray Data pipeline, on a laptop or a cluster.

::

    paths ──from_items──▶ decode (CPU tasks: decode_file) ──▶ embed + write (actor pool) ──▶ report rows
                                                               │ model once per actor (GPU when there is one)
                                                               └─▶ OUT.parts/part-….parquet, as it goes

- The driver lists the inputs (local folders, or object-store URIs through
  :mod:`pyarrow.fs`) and skips the files the output already holds.
- Decoding runs in Ray tasks, one CPU each, with the same
  :func:`audioclip.inference.decode_file` as the plain engine; a bad file
  becomes a row with its reason, as there.
- An actor pool (``concurrency`` actors, ``num_gpus`` each; one per GPU when
  the cluster has GPUs) holds the model, shipped once through the object
  store, embeds each batch of files with
  :func:`audioclip.inference.embed_decoded` and writes it as one Parquet part
  (complete or absent; a name no other actor or run picks). Only a line per
  file (its path, its error, its rows) comes back to the driver.
- Execution is Ray Data's streaming executor: memory stays bounded by the
  blocks in flight, never the dataset. A run that dies keeps its parts; the
  next run skips their files.
- At the end the driver merges the parts into the output (as the plain
  engine does), unless the output is a folder of parts.

With no ``address`` a local Ray instance is started (and stopped at the end);
``address="auto"`` or ``"ray://head:10001"`` joins a cluster, whose nodes
must have ``audioclip[ray]`` installed and see the output (a shared file
system or an object-store URI).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..embeddings_io import EmbeddingWriter, rows_table, write_part
from ..inference import DecodeOptions, decode_file, embed_decoded
from . import EmbedJob, EmbedReport
from ..util import is_uri

__all__ = ["RayOptions", "run"]


@dataclass(frozen=True)
class RayOptions:
    """The ray engine's own options (``embed_to(..., engine="ray", address="auto")``).

    - ``address``: None starts a local Ray instance (or uses the one this
      process already started); otherwise ``ray.init(address=...)``.
    - ``num_gpus``: GPUs per actor (default 1 when the cluster has GPUs, else 0).
    - ``concurrency``: actors (default: the cluster's GPUs / ``num_gpus``, or 1
      on CPUs). ``cpus_per_actor`` and ``threads_per_actor`` (torch threads)
      size a CPU actor; decoding takes one CPU per task from the rest.
    - ``device``: the actors' device: ``auto`` (CUDA when the actor has a GPU),
      ``cpu``, ``cuda``.
    - ``progress``: Ray Data's progress bars and log; ``ray_init``: more
      arguments for ``ray.init``.

    The job's ``files_per_part`` is the files per actor call, i.e. per Parquet part.
    """

    address: str | None = None
    num_gpus: float | None = None
    concurrency: int | None = None
    cpus_per_actor: float = 1
    threads_per_actor: int | None = None
    device: str = "auto"
    progress: bool = False
    ray_init: dict | None = None


def run(job: EmbedJob) -> EmbedReport:
    """Embed the files of ``job`` with Ray Data (see :func:`audioclip.engines.embed_to`)."""
    import ray

    engine = RayOptions(**job.engine_options)  # an option of another engine: a TypeError naming it

    def embed(todo: list[str], writer: EmbeddingWriter, settings: dict,
              options: DecodeOptions) -> Iterator[tuple[str, str | None]]:
        if not todo:
            return  # nothing left: Ray is not even started
        started = _connect(ray, engine.address, engine.ray_init)
        try:
            for path, error in _run(ray, job, engine, todo, writer.parts, settings, options):
                yield path, error or None
        finally:
            if started:
                ray.shutdown()

    return job.execute("ray", embed)


def _connect(ray, address: str | None, extra: dict | None) -> bool:
    """Join ``address`` or start a local instance; True when this call started Ray (and should stop it)."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True)
    kwargs.update(extra or {})
    ray.init(address=address, **kwargs)
    return True


def _run(ray, job: EmbedJob, engine: RayOptions, todo, parts, settings, options: DecodeOptions):
    """Yield ``(path, error)`` for every file of ``todo`` as the pipeline finishes it ("" when embedded)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = engine.progress
    logging.getLogger("ray.data").setLevel(logging.INFO if engine.progress else logging.ERROR)

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    num_gpus = engine.num_gpus
    if num_gpus is None:
        num_gpus = 1 if gpus >= 1 else 0
    concurrency = engine.concurrency
    if concurrency is None:
        concurrency = max(1, int(gpus // num_gpus)) if num_gpus else 1

    model = job.model
    cpu_model = model
    if next(model.parameters()).device.type != "cpu":
        import copy

        cpu_model = copy.deepcopy(model).cpu()
    model_ref = ray.put(cpu_model)

    blocks = min(len(todo), max(2 * int(cpus), math.ceil(len(todo) / 8)), 20000)
    dataset = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    # Decoding stays in tasks of its own, so that it never waits for the model: Ray Data fuses a map
    # into the next actor stage when their remote arguments are equal, and max_calls (a task's, not
    # an actor's: a decode worker is replaced after that many tasks, which also bounds what a
    # leaking decoder can hold) makes them differ.
    decoded = dataset.map(functools.partial(_decode_row, options=options), num_cpus=1, max_calls=1000)
    written = decoded.map_batches(
        _EmbedAndWrite,
        fn_constructor_kwargs=dict(model_ref=[model_ref], device=engine.device, batch_size=job.batch_size,
                                   precision=job.precision, parts=parts, settings=settings,
                                   threads=engine.threads_per_actor),
        batch_size=job.files_per_part,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=num_gpus,
        num_cpus=engine.cpus_per_actor,
        zero_copy_batch=True,
    )
    for batch in written.iter_batches(batch_format="numpy", batch_size=None):
        for path, error in zip(batch["path"].tolist(), batch["error"].tolist()):
            yield str(path), str(error)


# -- in the Ray workers -------------------------------------------------------------------------------------


def _decode_row(row: dict, options: DecodeOptions) -> dict:
    """A decode task's work for one file: the decoded item, pickled (windows and frames as numpy arrays)."""
    path = str(row["path"])
    if is_uri(path):
        item = _decode_remote(path, options)
    else:
        item = decode_file(path, options)
    item["windows"] = [(s, e, np.ascontiguousarray(w.numpy())) for s, e, w in item["windows"]]
    item["frames"] = [(t, np.ascontiguousarray(f.numpy())) for t, f in item["frames"]]
    return {"path": path, "payload": pickle.dumps(item, protocol=5)}


def _decode_remote(uri: str, options: DecodeOptions) -> dict:
    """Fetch an object-store file to a temporary local file, decode it, and name it by its URI."""
    from pyarrow import fs as pafs

    suffix = os.path.splitext(uri)[1]
    with tempfile.TemporaryDirectory(prefix="audioclip-") as folder:
        local = os.path.join(folder, "input" + suffix)
        try:
            filesystem, where = pafs.FileSystem.from_uri(uri)
            with filesystem.open_input_stream(where) as src, open(local, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except Exception as err:  # reported like any unreadable file
            return {"path": uri, "source": None, "windows": [], "frames": [],
                    "error": f"cannot fetch: {type(err).__name__}: {err}"}
        item = decode_file(local, options)
        item["path"] = uri
        if item["error"]:
            item["error"] = item["error"].replace(local, uri)
        return item


class _EmbedAndWrite:
    """A Ray Data actor: the model, loaded once; embeds a batch of decoded files and writes them as one part."""

    def __init__(self, model_ref, device, batch_size, precision, parts, settings, threads=None):
        import ray
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        model = ray.get(model_ref[0])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.precision = precision
        self.parts = parts
        self.settings = settings

    def __call__(self, batch: dict) -> dict:
        items = [pickle.loads(payload) for payload in batch["payload"]]
        results = list(embed_decoded(self.model, items, batch_size=self.batch_size, device=self.device,
                                     precision=self.precision))
        table = rows_table(results, self.settings["checkpoint"], self.settings)
        write_part(self.parts, table, self.settings)  # before reporting: a reported file is on disk
        return {
            "path": np.array([r.path for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
        }
