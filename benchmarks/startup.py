"""Start-up of the command line: a one-clip ``audioclip classify`` against ``import torch, torchvision``.

What a user waits for before the first answer: Python, torch, the model built
from a local full-size checkpoint (AudioCLIP-RN50, random weights, the size of
the published ones), one 5 s clip decoded and classified against two labels.
The yardstick is the cost of importing torch and torchvision alone, measured in
the same run (so a slow or busy machine moves both), and the ratio is the
figure issue 11 asks to keep at or under 1.5.

    python benchmarks/startup.py                 # 5 runs of each after a warm-up: ~1-2 min on 2 cores
    python benchmarks/startup.py --runs 9 --json /tmp/startup.json
    python benchmarks/startup.py --profile       # also: where a classify run spends its time
    python benchmarks/startup.py --smoke         # AudioCLIP-tiny, one run, --profile: checks the script runs

Every command runs in a fresh subprocess (wall clock, median of ``--runs``, the
rounds interleaved so that a burst of load hits both rows alike). The fastest
runs' ratio and the CPU time (user + system, which other load hardly moves) are
printed beside it, with Linux's CPU pressure before and after: on a shared
machine a busy minute can double the classify row alone (it runs two threads
and reads half a gigabyte). The checkpoint and the clip are written to a
temporary folder, removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SR = 44100


def make_inputs(folder: Path, config: str = "AudioCLIP-RN50") -> tuple[Path, Path]:
    """A ``config`` checkpoint (random weights; default: the full size) and a 5 s stereo WAV in ``folder`` (kept if
    there)."""
    checkpoint, clip = folder / f"{config}-random.pt", folder / "clip.wav"
    if checkpoint.is_file() and clip.is_file():
        return checkpoint, clip
    import numpy as np
    import soundfile as sf
    import torch

    from audioclip import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model(config), checkpoint)
    rng = np.random.default_rng(0)
    t = np.arange(5 * SR) / SR
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.standard_normal((5 * SR, 2))
    sf.write(clip, wave.astype(np.float32), SR)
    return checkpoint, clip


def time_command(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds: user + system) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def cpu_pressure() -> str:
    """Linux's CPU pressure (share of time some task waited for a CPU), 10 s and 60 s averages."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"
    fields = dict(item.split("=") for item in line.split()[1:])
    return f"{fields['avg10']}% / {fields['avg60']}%"


def audioclip_command() -> list[str]:
    """The installed console script beside this Python, else ``python -m audioclip``."""
    script = Path(sys.executable).with_name("audioclip")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "audioclip"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (default: 5)")
    parser.add_argument("--json", metavar="FILE", help="also write every time here")
    parser.add_argument("--profile", action="store_true",
                        help="after the table: cProfile of one classify run, top 25 by cumulative time")
    parser.add_argument("--dir", help="keep the checkpoint and clip here (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: AudioCLIP-tiny, no warm-up, one run, --profile; --json "
                        "defaults to a file in the temporary folder")
    args = parser.parse_args(argv)
    config = "AudioCLIP-RN50"
    if args.smoke:
        config, args.runs, args.profile = "AudioCLIP-tiny", 1, True

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="audioclip-startup-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUDIOCLIP_OFFLINE": "1"}
    try:
        checkpoint, clip = make_inputs(folder, config)
        if args.smoke and not args.json:
            args.json = str(folder / "startup.json")
        size_mb = checkpoint.stat().st_size / 1e6
        classify = ["classify", str(clip), "--labels", "dog,rain", "--checkpoint", str(checkpoint), "--device", "cpu"]
        commands = {
            'python -c "import torch, torchvision"': [sys.executable, "-c", "import torch, torchvision"],
            "audioclip classify clip.wav --labels dog,rain --checkpoint FILE --device cpu":
                [*audioclip_command(), *classify],
        }
        for cmd in commands.values() if not args.smoke else ():  # warm-up: page cache, .pyc files
            time_command(cmd, env)
        pressure_before = cpu_pressure()
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                wall, used = time_command(cmd, env)
                times[name].append(wall)
                cpu[name].append(used)
        pressure_after = cpu_pressure()

        base_name = next(iter(commands))
        base = statistics.median(times[base_name])
        base_min, base_cpu = min(times[base_name]), statistics.median(cpu[base_name])
        import torch

        print(f"Start-up, {args.runs} runs each{'' if args.smoke else ' after a warm-up'}, interleaved; Python {platform.python_version()}, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads); "
              f"checkpoint {size_mb:.0f} MB ({config}), clip 5 s stereo WAV; CPU pressure (avg10 / avg60) "
              f"before {pressure_before}, after {pressure_after}\n")
        print("| command | median (s) | min-max (s) | ratio | ratio of the fastest runs | CPU time (s) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, values in times.items():
            median, fastest, used = statistics.median(values), min(values), statistics.median(cpu[name])
            print(f"| `{name}` | {median:.2f} | {fastest:.2f}-{max(values):.2f} | {median / base:.2f}x | "
                  f"{fastest / base_min:.2f}x | {used:.2f} ({used / base_cpu:.2f}x) |")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": args.runs, "times": times, "cpu": cpu,
                                                   "pressure": [pressure_before, pressure_after]}, indent=1))

        if args.profile:
            import pstats

            script, out = folder / "classify_once.py", folder / "classify.prof"
            script.write_text("import sys\nfrom audioclip.cli import main\n"
                              f"sys.exit(main({classify!r}))\n")
            subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(script)], env=env,
                           stdout=subprocess.DEVNULL, check=False)
            print()
            pstats.Stats(str(out)).sort_stats("cumulative").print_stats(25)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
