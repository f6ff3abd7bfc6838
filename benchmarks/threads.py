"""How the command line should use a small CPU: torch's thread settings, idle and busy, measured.

``python -m benchmarks.threads --data DATA [--image-size 64]`` times the same short training
command (``python -m helpers train --quick --epochs 2``) as a whole process under several thread
settings, in interleaved rounds, on the machine as it is ("idle") and with one other CPU-bound
process beside it ("busy", a pure-Python busy loop: what a second notebook, a test run or any
other program does to a 2-core Colab machine). It prints each setting's median wall time and
its ratio to torch's own default in the same rounds.

Settings (environment of the training process):

* ``default``: torch's default, one thread per core (``OMP_NUM_THREADS`` = the core count,
  which also keeps :mod:`helpers.cpu` from choosing);
* ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (idle threads spin);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
* ``spin-10k``, ``spin-100k``: ``GOMP_SPINCOUNT`` (how long an idle thread spins before it
  sleeps; libgomp's default is 300,000 iterations, ``PASSIVE`` is 0);
* ``one-thread``: ``OMP_NUM_THREADS=1``;
* ``helpers``: the plain command line, which lets :mod:`helpers.cpu` choose (the idle cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALL_CORES = str(os.cpu_count() or 1)
SETTINGS: dict[str, dict[str, str]] = {
    "default": {"OMP_NUM_THREADS": ALL_CORES},
    "helpers": {},
    "active": {"OMP_NUM_THREADS": ALL_CORES, "OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_NUM_THREADS": ALL_CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "spin-10k": {"OMP_NUM_THREADS": ALL_CORES, "GOMP_SPINCOUNT": "10000"},
    "spin-100k": {"OMP_NUM_THREADS": ALL_CORES, "GOMP_SPINCOUNT": "100000"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}


def _time_training(data: Path, outputs: Path, extra_env: dict[str, str], size: int) -> float:
    """Wall seconds of one short training run in a fresh process."""
    unset = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra_env, PNEUMONIA_OUTPUTS=str(outputs))
    with tempfile.TemporaryDirectory() as run:
        command = [sys.executable, "-m", "helpers", "train", "--data", str(data), "--out", run]
        command += ["--quick", "--epochs", "2", "--pretrained", "none", "--image-size", str(size)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def measure(data: Path, rounds: int, busy: bool, size: int) -> dict[str, list[float]]:
    """Each setting's wall times over ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    loop = None
    if busy:
        loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with tempfile.TemporaryDirectory() as outputs:
            _time_training(data, Path(outputs), {}, size)  # build the cache once, untimed
            for _ in range(rounds):
                for name, env in SETTINGS.items():
                    times[name].append(_time_training(data, Path(outputs), env, size))
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    """Median seconds per setting and the median per-round ratio to ``default``."""
    print(f"{label}: {len(times['default'])} rounds, wall seconds")
    for name, values in times.items():
        ratios = [d / v for d, v in zip(times["default"], values, strict=True)]
        print(
            f"  {name:10s} median {statistics.median(values):6.1f} s   "
            f"{statistics.median(ratios):5.2f}x the default's speed "
            f"(rounds: {', '.join(f'{v:.1f}' for v in values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64, help="64 = quick mode's size")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; `python -m helpers train "
        f"--quick --epochs 2 --image-size {args.image_size}` (400 images, batch 16)"
    )
    for busy in (False, True):
        label = "busy (one CPU-bound process beside it)" if busy else "idle"
        report(label, measure(args.data, args.rounds, busy, args.image_size))


if __name__ == "__main__":
    main()
