#!/usr/bin/env python
"""One script for the checks that need a GPU; prints a Markdown table (under 5 minutes on one GPU).

    .venv/bin/python benchmarks/gpu_check.py            # --json FILE keeps the numbers
    .venv/bin/python benchmarks/gpu_check.py --smoke    # every step on the CPU, AudioCLIP-tiny: checks the script

Rows:

1. the reference inputs (tests/fixtures) on CUDA in float32 against the original's
   reference vectors (max |ours - ref| / max |ref|; the CPU tolerance is 1e-4);
2. bfloat16 autocast against float32 on CUDA: smallest cosine of the audio
   embeddings, and zero-shot top-1 agreement on the ESC-10 clips of
   ../shared/data (labels "a sound of <category>"), else on the reference clips;
3. ``torch.compile`` of the audio head: agreement with eager and speed;
4. embedding throughput, 5 s clips, CUDA (fp32, bf16) against the CPU path in the
   same run (clips/s and ratio);
5. two AMP training steps (bf16 autocast, SGD) of the full model: finite losses;
6. a one-process NCCL DDP step: finite loss, gradients all-reduced.

Weights are the deterministic reference weights (the published ones cannot be
downloaded where this was written); with them the trunk amplifies rounding, so
the bf16 figures are a lower bound for trained weights. Without CUDA it says so
in one line and exits 0. ``--cpu-dry-run`` runs every step on the CPU;
``--smoke`` does so in seconds with the tiny architecture (its "reference"
vectors: its own float32 outputs on the CPU; ``torch.compile`` with the
``eager`` backend, so no compiler runs), writing ``--json`` into a temporary
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "data"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max())


DRY = [False]
SECONDS = [5.0]  # clip length: 0.5 s with --smoke
COUNT = [40]  # clips for the bf16 rows: 8 in a dry run, 4 with --smoke
SYNC = [lambda: None]  # torch.cuda.synchronize on a GPU


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs, synchronised."""
    best = float("inf")
    for _ in range(repeat):
        SYNC[0]()
        start = time.perf_counter()
        fn()
        SYNC[0]()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--clips", type=int, default=64, help="clips for the throughput rows (default 64)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every step on the CPU (gloo instead of NCCL), to check the script itself")
    parser.add_argument("--smoke", action="store_true",
                        help="--cpu-dry-run in seconds: AudioCLIP-tiny, 4 clips, torch.compile's eager backend")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        args.cpu_dry_run, args.clips, SECONDS[0], COUNT[0] = True, 4, 0.5, 4
        args.json = args.json or str(Path(tempfile.mkdtemp(prefix="audioclip-gpu-check-")) / "gpu_check.json")
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check")
        return 0
    dry = args.cpu_dry_run
    DRY[0] = dry
    if dry and not args.smoke:
        COUNT[0] = 8

    import numpy as np
    import torch.nn.functional as F

    from audioclip import AudioCLIP
    from audioclip.model import freeze_fbsp_kernel, tokenize
    from reference_weights import reference_state_dict

    started = time.time()
    if torch.cuda.is_available() and not args.cpu_dry_run:
        SYNC[0] = torch.cuda.synchronize
    device = torch.device("cpu" if dry else "cuda")
    kind = device.type
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)
    rows: list[dict] = []

    def row(check: str, result: str, detail: str = "", ok: bool | None = None) -> None:
        rows.append({"check": check, "result": result, "detail": detail, "ok": ok})
        mark = "" if ok is None else (" ok" if ok else " FAIL")
        print(f"  {check}: {result}{mark} {detail}", file=sys.stderr, flush=True)

    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 for the reference rows
    torch.backends.cudnn.allow_tf32 = False
    with np.load(ROOT / "tests" / "fixtures" / "public-v1.npz") as npz:
        ref = {k: npz[k] for k in npz.files}
    meta = json.loads((ROOT / "tests" / "fixtures" / "public-v1.json").read_text())
    cpu_model = AudioCLIP("AudioCLIP-tiny" if args.smoke else "AudioCLIP-RN50").eval()
    cpu_model.load_state_dict(reference_state_dict(cpu_model, "public-v1"))
    if args.smoke:  # the reference vectors belong to the full-size model: here, the CPU's own float32 outputs
        ref = smoke_reference(cpu_model, ref, meta["text_embed_texts"])
    model = freeze_fbsp_kernel(cpu_model).to(device)

    # 1. reference vectors on CUDA, float32
    with torch.inference_mode():
        for case in "abc":
            wave = torch.from_numpy(ref[f"audio_{case}_wave"]).to(device)
            err = rel(model.encode_audio(wave), torch.from_numpy(ref[f"audio_{case}_embed"]))
            row(f"fp32 audio {case} on {kind.upper()} vs reference", f"{err:.2e}", "tolerance 1e-4", err <= 1e-4)
        err = rel(model.encode_image(torch.from_numpy(ref["images"]).to(device)), torch.from_numpy(ref["image_embed"]))
        row("fp32 image vs reference", f"{err:.2e}", "tolerance 1e-5 (CPU)", err <= 1e-4)
        text = torch.cat([model.encode_text([t]) for t in meta["text_embed_texts"]])
        err = rel(text, torch.from_numpy(ref["text_embed"]))
        row("fp32 text vs reference", f"{err:.2e}", "tolerance 1e-5 (CPU)", err <= 1e-4)

    # 2. bf16 autocast against fp32
    clips, labels, source = _clips(ref)
    waves = torch.stack(clips).to(device)
    classes = [f"a sound of {c}" for c in labels]
    with torch.inference_mode():
        text = F.normalize(model.encode_text(classes).float(), dim=-1)
        fp32 = torch.cat([F.normalize(model.encode_audio(w[None]).float(), dim=-1) for w in waves])
        with torch.autocast(kind, dtype=torch.bfloat16):
            bf16 = torch.cat([F.normalize(model.encode_audio(w[None]).float(), dim=-1) for w in waves])
    cosine = F.cosine_similarity(fp32, bf16, dim=-1)
    agree = float(((fp32 @ text.T).argmax(1) == (bf16 @ text.T).argmax(1)).float().mean())
    row("bf16 autocast: smallest cosine to fp32", f"{float(cosine.min()):.4f}", f"{len(clips)} clips ({source})")
    row("bf16 autocast: zero-shot top-1 agreement", f"{100 * agree:.1f} %", f"{len(labels)} labels")

    # 3. torch.compile of the audio head
    batch = waves[: min(8, len(waves))]
    head = model.audio
    compiled = torch.compile(head, backend="eager" if args.smoke else "inductor")
    with torch.inference_mode():
        start = time.perf_counter()
        out_compiled = compiled(batch)
        sync()
        first = time.perf_counter() - start
        out_eager = head(batch)
        eager_s = timed(lambda: head(batch))
        compiled_s = timed(lambda: compiled(batch))
    err = rel(out_compiled, out_eager)
    row("torch.compile audio head vs eager", f"{err:.2e}", f"first call {first:.1f} s; "
        f"{eager_s / compiled_s:.2f}x eager at batch {len(batch)}", err <= 1e-3)

    # 4. throughput, 5 s clips (0.5 s with --smoke)
    n, seconds = args.clips, SECONDS[0]
    five = torch.rand(n, 1, int(seconds * 44100), generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    batch_size = min(32, n)

    def run(m, x, bs, autocast=False):
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            for i in range(0, len(x), bs):
                m.encode_audio(x[i : i + bs])

    gpu_x = five.to(device)
    run(model, gpu_x[:8], 8)  # warm-up (cuDNN autotuning)
    gpu_fp32 = n / timed(lambda: run(model, gpu_x, batch_size), repeat=2)
    gpu_bf16 = n / timed(lambda: run(model, gpu_x, batch_size, autocast=True), repeat=2)
    cpu_fast = freeze_fbsp_kernel(cpu_model)
    cpu_n = min(8, n)
    start = time.perf_counter()
    run(cpu_fast, five[:cpu_n], cpu_n)
    cpu_rate = cpu_n / (time.perf_counter() - start)
    row(f"embed {seconds:g} s clips, CPU (default mode)", f"{cpu_rate:.1f} clips/s", f"{torch.get_num_threads()} threads, batch {cpu_n}")
    row(f"embed {seconds:g} s clips, {kind.upper()} fp32", f"{gpu_fp32:.1f} clips/s", f"{gpu_fp32 / cpu_rate:.1f}x CPU, batch {batch_size}")
    row(f"embed {seconds:g} s clips, {kind.upper()} bf16 autocast", f"{gpu_bf16:.1f} clips/s", f"{gpu_bf16 / cpu_rate:.1f}x CPU, batch {batch_size}")

    # 5. two AMP training steps
    train_model = AudioCLIP("AudioCLIP-tiny" if args.smoke else "AudioCLIP-RN50").to(device)
    train_model.load_state_dict(reference_state_dict(train_model, "public-v1"))
    train_model.train()
    optimizer = torch.optim.SGD(train_model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    tokens = tokenize(classes[:4]).to(device)
    losses = []
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16):
            out = train_model(audio=waves[:4], text=tokens)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss))
    finite = all(np.isfinite(losses))
    row("AMP (bf16) training: two steps", " -> ".join(f"{x:.4f}" for x in losses),
        f"{'tiny' if args.smoke else 'full'} model, batch 4", finite)

    # 6. one-process NCCL DDP step
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    try:
        if dry:
            dist.init_process_group("gloo", rank=0, world_size=1)
            ddp = torch.nn.parallel.DistributedDataParallel(train_model)
        else:
            dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
            ddp = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=[0])
        optimizer.zero_grad(set_to_none=True)
        out = ddp(audio=waves[:4], text=tokens)
        out.loss.backward()
        optimizer.step()
        grads = sum(1 for p in train_model.parameters() if p.grad is not None)
        row("NCCL DDP step (1 process)", f"loss {float(out.loss):.4f}", f"{grads} parameters with gradients",
            bool(np.isfinite(float(out.loss))))
    except Exception as e:  # report, do not hide the table
        row("NCCL DDP step (1 process)", f"failed: {type(e).__name__}: {e}", ok=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(device)
    weights = "AudioCLIP-tiny, reference rule weights (smoke)" if args.smoke else "reference weights"
    print(f"\nGPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{time.time() - started:.0f} s ({weights})\n")
    print("| check | result | detail |")
    print("| --- | --- | --- |")
    for r in rows:
        flag = "" if r["ok"] is None else (" ✓" if r["ok"] else " ✗")
        print(f"| {r['check']} | {r['result']}{flag} | {r['detail']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0 if all(r["ok"] is not False for r in rows) else 1


def smoke_reference(model, ref: dict, texts: list[str]) -> dict:
    """``ref`` with its vectors replaced by ``model``'s own float32 CPU outputs (clips cut to 0.5 s, images resized
    to the model's input)."""
    import torch.nn.functional as F

    from audioclip.model import freeze_fbsp_kernel

    fast = freeze_fbsp_kernel(model)
    size = model.visual.image_size
    ref = dict(ref, images=F.interpolate(torch.from_numpy(ref["images"]), size=(size, size)).numpy())
    with torch.inference_mode():
        for case in "abc":
            ref[f"audio_{case}_wave"] = ref[f"audio_{case}_wave"][..., :22050]
            ref[f"audio_{case}_embed"] = fast.encode_audio(torch.from_numpy(ref[f"audio_{case}_wave"])).numpy()
        ref["image_embed"] = model.encode_image(torch.from_numpy(ref["images"])).numpy()
        ref["text_embed"] = torch.cat([model.encode_text([t]) for t in texts]).numpy()
    return ref


def _clips(ref) -> tuple[list[torch.Tensor], list[str], str]:
    """5 s mono clips with their ESC-10 categories (shared data), else the reference clips (fixed labels)."""
    import csv

    table = SHARED / "esc50" / "files.csv"
    if table.is_file():
        from audioclip.media import load_audio
        from audioclip.media.windows import split_windows

        with open(table) as f:
            rows = list(csv.DictReader(f))
        labels = sorted({r["category"] for r in rows})
        clips = []
        for r in rows[: COUNT[0]]:
            wave = load_audio(SHARED / "esc50" / r["path"], mono=True)
            clips.append(split_windows(wave, window=SECONDS[0])[0].wave)  # centre-padded, or the first 5 s
        return clips, labels, "ESC-10 from ../shared/data"
    labels = ["dog", "rain", "sea waves", "crying baby", "clock tick", "sneezing", "helicopter", "chainsaw",
              "rooster", "crackling fire"]
    clips = []
    for case in "abc":
        wave = torch.from_numpy(ref[f"audio_{case}_wave"])
        for item in wave:
            mono = item.mean(0, keepdim=True)
            samples = int(SECONDS[0] * 44100)
            clips.append(torch.nn.functional.pad(mono, (0, max(0, samples - mono.shape[-1])))[:, :samples])
    return clips, labels, "reference clips"


if __name__ == "__main__":
    sys.exit(main())
