#!/usr/bin/env python
"""Inference speed of AudioCLIP, every fast path against the plain computation, in one run.

    .venv/bin/python benchmarks/bench_inference.py           # 5-10 min on a 2-core CPU
    .venv/bin/python benchmarks/bench_inference.py --quick   # ~2 min: fewer batches and rounds
    .venv/bin/python benchmarks/bench_inference.py --checkpoint full   # the published weights
    .venv/bin/python benchmarks/bench_inference.py --smoke   # seconds: checks the script runs (numbers meaningless)

Prints markdown tables (paste them into docs/performance.md):

- the machine: CPU model, cores, torch version, bf16 support, measured float32 GEMM
  throughput, and the CPU pressure (Linux PSI) before and after, which shows whether
  other processes competed for the cores;
- the FLOPs per 5 s clip (fbsp front end and trunk);
- audio embedding of 5 s mono clips at batch 1, 8, 32 and of stereo clips, for each
  compute mode: clips/s, latency, ratio to ``plain`` measured in the same run,
  achieved GFLOP/s and fraction of the GEMM throughput, peak memory;
- the image and text encoders: items/s;
- files -> embeddings for ESC-10 clips (decode + resample + model) with 0, 1, 2
  DataLoader workers, against the model alone on the same clips;
- accuracy of every fast path: max error relative to the exact (``plain``) path on
  the reference clips, and on the ESC-10 clips the zero-shot top-1 agreement with
  float32 ("a sound of <category>"; deterministic reference weights, salt
  "public-v1", since the published weights cannot be downloaded here).

When CUDA is available the audio rows are repeated on the GPU, with the GPU modes
(bf16, bf16 + compile) added. Timings are the best of a few interleaved rounds: the
modes alternate, so slow phases of a shared machine hit all of them alike.

``--smoke`` runs every section in seconds: the tiny architecture with random
weights, 0.5 s clips (the reference clips cut to it too), generated clips in a
temporary folder in place of ESC-10, batch sizes 1 and 2, one round, one memory
probe, ``--json`` into that folder.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reference_weights: the deterministic weight rule
ESC50 = ROOT.parent / "shared" / "data" / "esc50"
FIXTURES = ROOT / "tests" / "fixtures" / "public-v1.npz"

CLIP_SAMPLES = 5 * 44100

warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)


_START = time.perf_counter()


def log(*args) -> None:
    print(f"[{time.perf_counter() - _START:6.0f} s]", *args, file=sys.stderr, flush=True)


# -- the machine ---------------------------------------------------------------------


def cpu_info() -> dict:
    info = {"model": platform.processor() or "unknown", "flags": set()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["model"] = value.strip()
            if key.strip() == "Flags":
                info["flags"] = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    info["cores"] = os.cpu_count()
    info["bf16_native"] = bool(info["flags"] & {"avx512_bf16", "amx_bf16"})
    return info


def cpu_pressure() -> str:
    """Linux PSI "some" averages: the share of time runnable tasks waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        fields = dict(item.split("=") for item in line.split()[1:])
        return f"avg10 {fields['avg10']}%, avg60 {fields['avg60']}%"
    except (OSError, IndexError, KeyError, ValueError):
        return "n/a"


def cpu_ticks() -> tuple[int, int] | None:
    """(all, stolen) CPU ticks since boot from /proc/stat: on a virtual machine, the time the host gave to others."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields[:8]), fields[7]
    except (OSError, IndexError, ValueError):
        return None


def steal_share(before, after) -> str:
    if before is None or after is None or after[0] == before[0]:
        return "n/a"
    return f"{100 * (after[1] - before[1]) / (after[0] - before[0]):.1f}%"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_throughput(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matrix product."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flops_per_clip(head) -> tuple[float, float]:
    """(front end, trunk + projection) FLOPs for one 5 s mono clip, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    wave = torch.zeros(1, 1, CLIP_SAMPLES)
    with torch.no_grad():
        head(wave[..., :4000])  # fill the kernel cache: its construction is not a matmul
        with FlopCounterMode(display=False) as counter:
            log_power = head.log_power(wave)
        front = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            head.fc(head.pooled_features(log_power))
        trunk = counter.get_total_flops()
    return float(front), float(trunk)


# -- timing ----------------------------------------------------------------------------


def interleaved(fns: dict, rounds: int, device: torch.device, warmup: bool = True, outputs: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up call each, then ``rounds`` rounds in turn.

    ``outputs``, if given, receives each function's last result.
    """
    times = {name: [] for name in fns}
    with torch.inference_mode():
        if warmup:
            for name, fn in fns.items():
                log(f"    warm-up {name}")
                fn()
                sync(device)
        for _ in range(rounds):
            for name, fn in fns.items():
                sync(device)
                start = time.perf_counter()
                out = fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
                if outputs is not None:
                    outputs[name] = out
    return times


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 2 ms)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def memory_probe(mode: str, batch: int, channels: int, threads: int, smoke: bool = False) -> None:
    """Child process: print the peak extra memory (MB) of one forward pass in ``mode``.

    Runs with glibc's mmap threshold pinned low (set by the parent), so freed
    buffers go back to the system and the resident size follows live memory.
    """
    torch.set_num_threads(threads)
    from audioclip import ESResNeXtFbsp
    from audioclip.model import apply_audio_mode

    torch.manual_seed(0)
    if smoke:
        from audioclip import create_model

        head = create_model("ESResNeXt-fbsp-tiny").eval()
    else:
        head = ESResNeXtFbsp(num_classes=1024).eval()  # weights do not matter for memory
    wave = torch.rand(batch, channels, CLIP_SAMPLES) * 0.2 - 0.1
    options = {"calibration": wave[:2]} if mode == "int8" else {}
    fn = apply_audio_mode(head, mode, inplace=True, **options)
    with torch.inference_mode(), RssSampler() as sampler:
        fn(wave)  # a first pass: includes the kernel cache and any weight packing
    print(json.dumps({"peak_mb": (sampler.peak - sampler.base) / 2**20}))


def probe_memory(mode: str, batch: int, channels: int, threads: int, smoke: bool = False) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-probe", f"{mode}:{batch}:{channels}", "--threads", str(threads),
           *(["--smoke"] if smoke else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError):
        log(f"    memory probe {mode} failed")
        return None


# -- models ------------------------------------------------------------------------------


def load_model(checkpoint: str | None):
    """The published weights (``checkpoint``: registry name or path), or the deterministic reference weights."""
    from audioclip import AudioCLIP, create_model

    if checkpoint:
        return create_model(checkpoint)
    from reference_weights import reference_state_dict

    model = AudioCLIP().eval()
    model.load_state_dict(reference_state_dict(model, "public-v1"))
    return model


def batchnorm_reestimated(model, waves: torch.Tensor, batch: int = 8):
    """A copy of ``model`` whose audio-head BatchNorm statistics are re-estimated on ``waves``.

    The reference weights are random: their BatchNorm statistics do not match the
    activations, which grow through the trunk, and the network amplifies small
    perturbations (such as bfloat16 rounding) from stage to stage. Re-estimating
    the statistics (no weight changes, no labels) normalises every layer as a
    trained network's would; it is a better-conditioned stand-in, still not a
    trained model.
    """
    copy_ = copy.deepcopy(model)
    head = copy_.audio
    for module in head.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over all batches
    head.train()
    with torch.no_grad():
        for i in range(0, len(waves), batch):
            head(waves[i : i + batch])
    head.eval()
    return copy_


def build_modes(head, device: torch.device, *, compile: bool, bf16: bool, calibration: torch.Tensor | None):
    """name -> callable(wave) for every mode to measure on ``device``."""
    from audioclip.model import freeze_fbsp_kernel, original_order
    from audioclip.model.fast import build_fast_head

    modes = {"plain": original_order(head), "default": freeze_fbsp_kernel(head), "fused": build_fast_head(head, "fused")}
    if compile:
        modes["fused+compile"] = build_fast_head(head, "fused", compile=True)
    if device.type == "cpu" and calibration is not None:
        log("    calibrating int8")
        modes["int8"] = build_fast_head(head, "int8", calibration=calibration)
    if bf16:
        modes["bf16"] = build_fast_head(head, "bf16")
        if compile and device.type == "cuda":
            modes["bf16+compile"] = build_fast_head(head, "bf16", compile=True)
    return modes


# -- data ----------------------------------------------------------------------------------


def esc10_rows(folder: str) -> list[dict]:
    with open(ESC50 / "files.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["path"].startswith(folder + "/")]


def decode(path: Path) -> torch.Tensor:
    """(channels, samples) float32 at 44.1 kHz: audioclip.media when present, else soundfile + soxr."""
    try:
        from audioclip.media import load_audio
    except ImportError:
        import soundfile
        import soxr

        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if rate != 44100:
            data = soxr.resample(data, rate, 44100, quality="VHQ")
        return torch.from_numpy(np.ascontiguousarray(data.T))
    return load_audio(path)


def fit(wave: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    samples = samples or CLIP_SAMPLES
    if wave.shape[-1] >= samples:
        return wave[..., :samples]
    return F.pad(wave, (0, samples - wave.shape[-1]))


def spread(rows: list[dict], count: int) -> list[dict]:
    """``count`` rows spread evenly over the list (so over classes and folds)."""
    if count >= len(rows):
        return rows
    step = len(rows) / count
    return [rows[int(i * step)] for i in range(count)]


# -- sections ----------------------------------------------------------------------------------


def fmt(x, digits=2):
    """``digits`` decimals; ``digits=None``: two significant digits."""
    if x is None:
        return "—"
    return f"{x:.2g}" if digits is None else f"{x:.{digits}f}"


def audio_section(head, device, args, cpu, peak_gflops, flops_clip, calibration, results):
    native_bf16 = device.type == "cuda" or cpu["bf16_native"]
    bf16 = native_bf16 or not args.quick  # emulated bf16 is ~15x slower: measured at batch 1 only
    compile_ok = not args.no_compile and not args.quick
    log(f"[{device}] building modes")
    modes = build_modes(head, device, compile=compile_ok, bf16=bf16, calibration=calibration)
    batches = [1, 8] if args.quick else [1, 8, 32]
    if device.type == "cuda":
        batches = [1, 8, 32, 128]
    if args.smoke:
        batches = [1, 2]
    rounds = {1: 2 if args.quick else 3, 2: 1, 8: 1 if args.quick else 2, 32: 1, 128: 3}
    if args.rounds:
        rounds = {b: args.rounds for b in rounds}
    rows = []
    generator = torch.Generator().manual_seed(0)

    for batch in batches:
        wave = (torch.rand(batch, 1, CLIP_SAMPLES, generator=generator) * 0.2 - 0.1).to(device)
        fns, slow = {}, {}
        for name, fn in modes.items():
            if name == "bf16" and not native_bf16:
                if batch == 1:
                    slow[name] = lambda f=fn: f(wave)  # emulated: one round, at batch 1 only
                continue
            fns[name] = lambda f=fn: f(wave)
        log(f"[{device}] mono batch {batch}: {', '.join([*fns, *slow])}")
        warmup = batch == batches[0] or batch == 8 or device.type == "cuda" or args.smoke
        outputs = {}
        times = interleaved(fns, rounds[batch], device, warmup=warmup, outputs=outputs)
        if slow:
            times.update(interleaved(slow, 1, device, warmup=False, outputs=outputs))
        exact = outputs["plain"].float()
        for name, t in times.items():
            error = ((outputs[name].float() - exact).abs().max() / exact.abs().max()).item()
            rows.append(dict(device=str(device), input="mono", batch=batch, mode=name, seconds=min(t),
                             median=statistics.median(t), error=error))

    # stereo: plain runs a trunk pass per channel, the others batch the channels
    stereo_batch = 2 if args.smoke else 4 if args.quick else 8
    wave = (torch.rand(stereo_batch, 2, CLIP_SAMPLES, generator=generator) * 0.2 - 0.1).to(device)
    # (on a CPU the trunk runs clip by clip, so compiled modes see no new shape; on a GPU they would recompile)
    stereo_modes = ["plain", "default", "fused", "int8"] + (["fused+compile"] if device.type == "cpu" else [])
    fns = {n: (lambda f=f: f(wave)) for n, f in modes.items() if n in stereo_modes or (n == "bf16" and native_bf16)}
    log(f"[{device}] stereo batch {stereo_batch}")
    outputs = {}
    times = interleaved(fns, 1 if args.quick else 2, device, warmup=False, outputs=outputs)
    exact = outputs["plain"].float()
    for name, t in times.items():
        error = ((outputs[name].float() - exact).abs().max() / exact.abs().max()).item()
        rows.append(dict(device=str(device), input="stereo", batch=stereo_batch, mode=name, seconds=min(t),
                         median=statistics.median(t), error=error))

    # peak memory at batch 8, mono
    memory = {}
    mem_batch = 2 if args.smoke else 8
    if device.type == "cpu":
        for name in ("plain", "default", "fused", "int8", "bf16"):
            if name in modes and (name != "bf16" or native_bf16) and (not args.quick or args.smoke and name == "default"):
                log(f"[cpu] memory probe {name}")
                memory[name] = probe_memory(name, mem_batch, 1, args.threads, args.smoke)
    else:
        wave = (torch.rand(mem_batch, 1, CLIP_SAMPLES, generator=generator)).to(device) * 0.2 - 0.1
        for name, fn in modes.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with torch.inference_mode():
                fn(wave)
            torch.cuda.synchronize()
            memory[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    # ratios against plain at the same batch and input
    plain = {(r["input"], r["batch"]): r["seconds"] for r in rows if r["mode"] == "plain"}
    for r in rows:
        per_clip = r["seconds"] / r["batch"]
        r["clips_per_s"] = 1.0 / per_clip
        r["latency_ms"] = r["seconds"] * 1000
        r["vs_plain"] = plain.get((r["input"], r["batch"]), float("nan")) / r["seconds"]
        channels = 2 if r["input"] == "stereo" else 1
        r["gflops"] = sum(flops_clip) * channels * r["clips_per_s"] / 1e9
        r["of_peak"] = r["gflops"] / peak_gflops
        r["memory_mb"] = memory.get(r["mode"]) if (r["input"], r["batch"]) == ("mono", mem_batch) else None
        r["emulated"] = r["mode"] == "bf16" and not native_bf16
    results["audio"].extend(rows)
    return modes


def print_audio_table(rows, device, threads):
    print(f"\n### Audio embedding, {CLIP_SAMPLES / 44100:g} s clips ({device}{', %d threads' % threads if device == 'cpu' else ''}; best of the rounds)\n")
    print("| input | batch | mode | clips/s | latency (ms) | vs plain | GFLOP/s | of GEMM peak | peak memory (MB) | max err vs plain |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["device"] != device:
            continue
        mode = r["mode"] + (" (emulated)" if r["emulated"] else "")
        print(
            f"| {r['input']} | {r['batch']} | {mode} | {r['clips_per_s']:.2f} | {r['latency_ms']:.0f} | "
            f"{r['vs_plain']:.2f}x | {r['gflops']:.1f} | {100 * r['of_peak']:.0f}% | {fmt(r['memory_mb'], 0)} | {r['error']:.2g} |"
        )


def encoder_section(model, device, args, results):
    generator = torch.Generator().manual_seed(0)
    n_img, n_txt = (2, 4) if args.smoke else (8, 32) if args.quick else (16, 64)
    size = model.visual.image_size
    images = torch.randn(n_img, 3, size, size, generator=generator).to(device)
    from audioclip import tokenize

    tokens = tokenize([f"a sound of thing number {i}" for i in range(n_txt)]).to(device)
    fns = {"image": lambda: model.encode_image(images), "text": lambda: model.encode_text(tokens)}
    if device.type == "cuda":

        def bf16(fn):
            def run():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fn()

            return run

        fns.update({"image bf16": bf16(fns["image"]), "text bf16": bf16(fns["text"])})
    log(f"[{device}] image and text encoders")
    times = interleaved(fns, 1 if args.quick else 2, device)
    for name, t in times.items():
        count = n_img if name.startswith("image") else n_txt
        results["encoders"].append(dict(device=str(device), encoder=name, batch=count, items_per_s=count / min(t)))


def end_to_end_section(model, args, results):
    """Files -> embeddings through audioclip.inference.embed_files (or a DataLoader here), vs the model alone."""
    rows = spread(esc10_rows("audio_16k"), args.e2e_clips)
    paths = [str(ESC50 / r["path"]) for r in rows]
    batch = 8
    log(f"[e2e] decoding {len(paths)} clips for the model-only reference")
    start = time.perf_counter()
    waves = [fit(decode(Path(p))) for p in paths]
    decode_s = time.perf_counter() - start
    stacked = torch.stack(waves)

    def model_only():
        for i in range(0, len(stacked), batch):
            F.normalize(model.encode_audio(stacked[i : i + batch]), dim=-1)

    def files(workers):
        def run():
            try:
                from audioclip.inference import embed_files
            except ImportError:
                return _files_fallback(model, paths, batch, workers)
            out = list(embed_files(model, paths, batch_size=batch, workers=workers))
            bad = [r.path for r in out if not r.ok]
            if bad:
                raise RuntimeError(f"embed_files failed on {bad[:3]}")

        return run

    fns = {"model only (decoded beforehand)": model_only}
    for workers in (0, 1, 2) if not args.quick else (0, 2):
        fns[f"files, {workers} workers"] = files(workers)
    log(f"[e2e] {', '.join(fns)}")
    times = interleaved(fns, 1 if args.quick else 3, torch.device("cpu"), warmup=False)
    reference = len(paths) / min(times["model only (decoded beforehand)"])
    for name, t in times.items():
        rate = len(paths) / min(t)
        results["e2e"].append(dict(pipeline=name, clips=len(paths), clips_per_s=rate, of_model_only=rate / reference))
    results["e2e_decode_s_per_clip"] = decode_s / len(paths)


def _files_fallback(model, paths, batch, workers):
    from torch.utils.data import DataLoader

    loader = DataLoader([Path(p) for p in paths], batch_size=batch, num_workers=workers, collate_fn=lambda ps: torch.stack([fit(decode(p)) for p in ps]))
    for waves in loader:
        F.normalize(model.encode_audio(waves), dim=-1)


def accuracy_section(model, modes, args, results):
    """Error of every mode against the exact path; zero-shot agreement with float32 on ESC-10."""
    reference = dict(np.load(FIXTURES))
    if args.smoke:
        reference.update({f"audio_{c}_wave": reference[f"audio_{c}_wave"][..., :CLIP_SAMPLES] for c in "abc"})
    exact = modes["plain"]
    log("[accuracy] reference clips")
    with torch.inference_mode():
        waves = {case: torch.from_numpy(reference[f"audio_{case}_wave"]) for case in "abc"}
        exact_out = {case: exact(x) for case, x in waves.items()}
        # what each path is also compared with: the original's outputs, which belong to the
        # reference weights; for another checkpoint, the exact path's own
        if args.checkpoint:
            target_out, target_db = exact_out, {c: exact.log_power(waves[c]).numpy() for c in "bc"}
        else:
            target_out = {c: torch.from_numpy(reference[f"audio_{c}_embed"]) for c in "abc"}
            target_db = {c: reference[f"audio_{c}_db"] for c in "bc"}
        for name, fn in modes.items():
            if "compile" in name:
                continue
            errors, to_reference = [], []
            emulated = name == "bf16" and not cpu_info()["bf16_native"]
            for case in "bc" if emulated else "abc":  # emulated bf16 is slow: the short clips
                want, got = exact_out[case], fn(waves[case])
                errors.append(((got - want).abs().max() / want.abs().max()).item())
                if not args.checkpoint:
                    ref = target_out[case]
                    to_reference.append(((got - ref).abs().max() / ref.abs().max()).item())
            results["errors"].append(dict(mode=name, vs_plain=max(errors), vs_reference=max(to_reference, default=None)))
        # the sliced fbsp kernel: dB and embedding error
        from audioclip.model.fast import build_fast_head

        sliced = build_fast_head(model.audio, "fused", slice_kernel=True)
        db_max, db_p99, emb = 0.0, 0.0, []
        for case in "bc":
            err = np.abs(sliced.log_power(waves[case]).numpy() - target_db[case])
            db_max, db_p99 = max(db_max, float(err.max())), max(db_p99, float(np.percentile(err, 99)))
        for case in "abc":
            ref = target_out[case]
            emb.append(((sliced(waves[case]) - ref).abs().max() / ref.abs().max()).item())
        results["sliced_kernel"] = dict(db_max=db_max, db_p99=db_p99, embed_vs_reference=max(emb))

    agreement = Agreement(model, args)
    # plain mode on the first clips; and how much the original's own float32 result
    # moves on them: plain mode again with one thread fewer
    n = min(16, len(agreement.waves))
    plain = agreement.measure("plain", modes["plain"], torch.device("cpu"), n, results)
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(threads - 1)
        try:
            agreement.measure(f"plain, {threads - 1} thread(s) (noise floor)", modes["plain"], torch.device("cpu"), n, results, against=plain)
        finally:
            torch.set_num_threads(threads)
    for name, fn in modes.items():
        if name in ("default", "plain") or "compile" in name:
            continue
        limit = None
        if name == "bf16" and not cpu_info()["bf16_native"]:
            limit = args.bf16_clips  # emulated bf16 is slow
        agreement.measure(name, fn, torch.device("cpu"), limit, results)

    if not args.checkpoint:
        # the reduced-precision paths again on a better-conditioned stand-in (see batchnorm_reestimated)
        from audioclip.model.fast import build_fast_head

        log("[accuracy] BatchNorm statistics re-estimated on the ESC-10 clips")
        standin = batchnorm_reestimated(model, agreement.waves)
        standin_agreement = Agreement(standin, args, waves=agreement.waves, rows=agreement.rows)
        results["zero_shot_standin"] = standin_agreement.summary
        standin_modes = {"fused": build_fast_head(standin.audio, "fused")}
        if "int8" in modes:
            standin_modes["int8"] = build_fast_head(standin.audio, "int8", calibration=args.calibration)
        if "bf16" in modes and cpu_info()["bf16_native"]:
            standin_modes["bf16"] = build_fast_head(standin.audio, "bf16")
        for name, fn in standin_modes.items():
            standin_agreement.measure(f"{name} (stand-in: BatchNorm re-estimated)", fn, torch.device("cpu"), None, results)
    return agreement


class Agreement:
    """Zero-shot top-1 agreement with float32 on the 44.1 kHz ESC-10 clips."""

    def __init__(self, model, args, waves=None, rows=None):
        rows = rows or spread(esc10_rows("audio"), args.agreement_clips)
        self.rows = rows
        self.categories = sorted({r["category"] for r in esc10_rows("audio_16k")})
        if waves is None:
            log(f"[accuracy] decoding {len(rows)} ESC-10 clips")
            waves = torch.stack([fit(decode(ESC50 / r["path"])) for r in rows])
        self.waves = waves
        truth = torch.tensor([self.categories.index(r["category"]) for r in rows])
        labels = [f"a sound of {c.replace('_', ' ')}" for c in self.categories]
        with torch.inference_mode():
            self.text = F.normalize(model.encode_text(labels), dim=-1).cpu()
            log("[accuracy] float32 embeddings (default mode)")
            self.fp32 = self.embed(model.audio, torch.device("cpu"))
        self.centre = self.fp32.mean(dim=0)
        self.text_centred = F.normalize(self.text - self.text.mean(dim=0), dim=-1)
        self.base, self.base_centred = self.predict(self.fp32), self.predict(self.fp32, True)
        self.summary = dict(
            clips=len(rows),
            fp32_class_histogram=torch.bincount(self.base, minlength=len(self.categories)).tolist(),
            fp32_centred_histogram=torch.bincount(self.base_centred, minlength=len(self.categories)).tolist(),
            fp32_accuracy=(self.base == truth).float().mean().item(),
        )

    def embed(self, fn, device, limit=None) -> torch.Tensor:
        x = self.waves[:limit]
        with torch.inference_mode():
            return torch.cat([fn(x[i : i + 8].to(device)).float().cpu() for i in range(0, len(x), 8)])

    def predict(self, e, centred=False):
        if centred:
            return (F.normalize(e - self.centre, dim=-1) @ self.text_centred.T).argmax(dim=-1)
        return (F.normalize(e, dim=-1) @ self.text.T).argmax(dim=-1)

    def measure(self, name, fn, device, limit, results, against=None) -> torch.Tensor:
        """Agreement of ``fn`` with the float32 default path (or with the embeddings ``against``)."""
        log(f"[accuracy] {name} on {device}, {limit or len(self.waves)} clips")
        e = self.embed(fn, device, limit)
        n = len(e)
        fp32 = self.fp32[:n] if against is None else against
        base, base_centred = self.predict(fp32), self.predict(fp32, True)
        results["agreement"].append(
            dict(
                mode=name,
                device=str(device),
                clips=n,
                top1_agreement=(self.predict(e) == base).float().mean().item(),
                centred_top1_agreement=(self.predict(e, True) == base_centred).float().mean().item(),
                min_cosine=F.cosine_similarity(e, fp32, dim=-1).min().item(),
                max_rel_error=((e - fp32).abs().max() / fp32.abs().max()).item(),
            )
        )
        return e


# -- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches, rounds and clips (~3 min on 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-cuda", action="store_true", help="CPU rows only, even when CUDA is available")
    parser.add_argument("--e2e-clips", type=int, default=None, help="ESC-10 files for the end-to-end rows")
    parser.add_argument("--agreement-clips", type=int, default=None, help="ESC-10 clips for the zero-shot agreement")
    parser.add_argument("--bf16-clips", type=int, default=None, help="clips for bf16 agreement when bf16 is emulated")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per batch size (default 3 / 2 / 1 for batch 1 / 8 / 32)")
    parser.add_argument("--checkpoint", help="published weights to measure (registry name or path; default: the "
                        "deterministic reference weights, since the published ones may not be downloadable)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--smoke", action="store_true",
                        help="every section in seconds on generated clips and the tiny architecture (checks the script)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or os.cpu_count() or 1
    if args.smoke:
        global CLIP_SAMPLES
        CLIP_SAMPLES = 22050
    if args.memory_probe:
        mode, batch, channels = args.memory_probe.split(":")
        memory_probe(mode, int(batch), int(channels), args.threads, args.smoke)
        return
    if args.smoke:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="audioclip-bench-inference-"))
        try:
            smoke_setup(args, folder)
            run(args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    run(args)


def smoke_setup(args, folder: Path) -> None:
    """``--smoke``: generated clips laid out as ESC-10's (files.csv, audio/, audio_16k/), AudioCLIP-tiny."""
    global ESC50
    import soundfile

    ESC50 = folder / "esc"
    rng = np.random.default_rng(0)
    with open(_mkdir(ESC50) / "files.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "category"])
        for sub, rate in (("audio", 44100), ("audio_16k", 16000)):
            _mkdir(ESC50 / sub)
            for i in range(4):
                category = ("rain", "dog")[i % 2]
                path = f"{sub}/1-{i}-A-{i % 2}.wav"
                soundfile.write(ESC50 / path, (0.05 * rng.standard_normal(rate // 2)).astype(np.float32), rate)
                out.writerow([path, category])
    args.quick, args.checkpoint, args.rounds, args.no_compile = True, "AudioCLIP-tiny", 1, True
    args.e2e_clips = args.agreement_clips = 4
    args.bf16_clips = 2
    args.json = args.json or folder / "bench_inference.json"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(args) -> None:
    args.e2e_clips = args.e2e_clips or (16 if args.quick else 48)
    args.agreement_clips = args.agreement_clips or (24 if args.quick else 83)
    args.bf16_clips = args.bf16_clips or (8 if args.quick else 16)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cpu = cpu_info()
    results = {"audio": [], "encoders": [], "e2e": [], "errors": [], "agreement": []}
    pressure_before, ticks_before = cpu_pressure(), cpu_ticks()

    log(f"loading the model ({args.checkpoint or 'reference weights'})")
    model = load_model(args.checkpoint)
    head = model.audio
    front, trunk = flops_per_clip(head)
    log("measuring GEMM throughput")
    peak = {"cpu": gemm_throughput(torch.device("cpu"), torch.float32, 256 if args.smoke else 2048 if args.quick else 4096)}

    calib_rows = [r for r in esc10_rows("audio_16k") if r["path"].split("/")[1].startswith("1-")]
    calibration = torch.stack([fit(decode(ESC50 / r["path"])) for r in spread(calib_rows, 4 if args.quick else 8)])
    args.calibration = calibration

    cpu_modes = audio_section(head, torch.device("cpu"), args, cpu, peak["cpu"], (front, trunk), calibration, results)
    encoder_section(model, torch.device("cpu"), args, results)
    end_to_end_section(model, args, results)
    agreement = accuracy_section(model, cpu_modes, args, results)
    results["zero_shot"] = agreement.summary
    del cpu_modes

    gpu_name = None
    if torch.cuda.is_available() and not args.no_cuda:
        device = torch.device("cuda")
        gpu_name = torch.cuda.get_device_name(device)
        peak["cuda"] = gemm_throughput(device, torch.float32, 8192)
        peak["cuda bf16"] = gemm_throughput(device, torch.bfloat16, 8192)
        gpu_model = copy.deepcopy(model).to(device)
        gpu_modes = audio_section(gpu_model.audio, device, args, cpu, peak["cuda"], (front, trunk), None, results)
        encoder_section(gpu_model, device, args, results)
        for name in ("default", "fused", "bf16", "bf16+compile"):
            if name in gpu_modes:
                agreement.measure(name, gpu_modes[name], device, None, results)

    pressure_after, steal = cpu_pressure(), steal_share(ticks_before, cpu_ticks())
    elapsed = time.perf_counter() - started

    # -- report -----------------------------------------------------------------
    import audioclip

    print("## Inference benchmark\n")
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(f"- CPU: {cpu['model']}, {cpu['cores']} cores, torch threads {args.threads}; "
          f"capability {torch.backends.cpu.get_cpu_capability()}; native bf16: {'yes' if cpu['bf16_native'] else 'no'}")
    if gpu_name:
        print(f"- GPU: {gpu_name}")
    print(f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, audioclip {getattr(audioclip, '__version__', 'dev')}")
    print(f"- CPU pressure (PSI, time other tasks made ours wait): before {pressure_before}; after {pressure_after}; "
          f"CPU time stolen by the hypervisor during the run: {steal}")
    print(f"- total run time {elapsed / 60:.1f} min")
    peak_text = ", ".join(f"{k} {v:.0f}" for k, v in peak.items())
    print(f"- measured GEMM throughput (GFLOP/s): {peak_text}")
    print(f"- FLOPs per 5 s mono clip: fbsp front end {front / 1e9:.2f} G, trunk + projection {trunk / 1e9:.2f} G, "
          f"total {(front + trunk) / 1e9:.2f} G")

    for device in dict.fromkeys(r["device"] for r in results["audio"]):
        print_audio_table(results["audio"], device, args.threads)

    print("\n### Image and text encoders\n")
    print("| device | encoder | batch | items/s |")
    print("| --- | --- | ---: | ---: |")
    for r in results["encoders"]:
        print(f"| {r['device']} | {r['encoder']} | {r['batch']} | {r['items_per_s']:.1f} |")

    print(f"\n### Files -> embeddings, {results['e2e'][0]['clips']} ESC-10 clips (16 kHz FLAC, decoded and resampled to 44.1 kHz), batch 8, default mode\n")
    print(f"Decoding + resampling alone: {1000 * results['e2e_decode_s_per_clip']:.1f} ms per clip.\n")
    print("| pipeline | clips/s | of model-only |")
    print("| --- | ---: | ---: |")
    for r in results["e2e"]:
        print(f"| {r['pipeline']} | {r['clips_per_s']:.2f} | {100 * r['of_model_only']:.0f}% |")

    print("\n### Accuracy of each path (CPU)\n")
    print("Max |out - exact| / max |exact| on the reference clips (2 x 5 s mono, 2 s stereo, 1 s mono), "
          "exact = plain mode; and against the original's reference outputs (tolerance 1e-4), "
          f"{'which belong to the reference weights: not measured for ' + args.checkpoint if args.checkpoint else 'computed with the same weights'}.\n")
    print("| mode | vs plain | vs reference outputs |")
    print("| --- | ---: | ---: |")
    for r in results["errors"]:
        print(f"| {r['mode']} | {r['vs_plain']:.2g} | {fmt(r['vs_reference'], None)} |")
    s = results["sliced_kernel"]
    print(f"\nSliced fbsp kernel (1654 of 2048 columns): dB tensors max {s['db_max']:.3g} dB, p99 {s['db_p99']:.2g} dB "
          f"(tolerance 0.05 / 1e-3); vs {'plain mode' if args.checkpoint else 'the reference outputs'}; "
          f"embeddings {s['embed_vs_reference']:.2g} of scale.")
    z = results["zero_shot"]
    weights = f"weights {args.checkpoint}" if args.checkpoint else "deterministic reference weights (not the published ones)"
    print(f"\nZero-shot against the CPU float32 default path on {z['clips']} ESC-10 clips (44.1 kHz), labels \"a sound of <category>\", "
          f"{weights}; float32 top-1 accuracy {100 * z['fp32_accuracy']:.1f}%. float32 predictions per class: {z['fp32_class_histogram']}; "
          f"after centring (mean audio and text embedding removed): {z['fp32_centred_histogram']}.")
    if "zero_shot_standin" in results:
        zs = results["zero_shot_standin"]
        print(f"Stand-in rows: the same weights with the audio head's BatchNorm statistics re-estimated on these clips "
              f"(better conditioned, still untrained); its float32 predictions per class {zs['fp32_class_histogram']}, "
              f"centred {zs['fp32_centred_histogram']}.")
    print()
    print("The noise-floor row compares plain mode (the original's computation) with itself at one thread fewer: "
          "how much the original's own float32 result moves on these clips.\n")
    print("| device | mode | clips | top-1 agreement with fp32 | centred top-1 agreement | min cosine | max error / scale |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results["agreement"]:
        print(f"| {r['device']} | {r['mode']} | {r['clips']} | {100 * r['top1_agreement']:.1f}% | "
              f"{100 * r['centred_top1_agreement']:.1f}% | {r['min_cosine']:.4f} | {r['max_rel_error']:.2g} |")

    if args.json:
        results.update(peak=peak, flops=dict(front=front, trunk=trunk), cpu=dict(model=cpu["model"], cores=cpu["cores"]),
                       pressure=dict(before=pressure_before, after=pressure_after), steal=steal, elapsed_s=elapsed)
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
