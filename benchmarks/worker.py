"""Training variants in processes of their own, timed in interleaved rounds.

Each variant runs in a fresh Python process so that its peak memory is its own. The
protocol is JSON lines: the parent writes the variant's spec as the first line of the
worker's stdin, then one command per line (``epoch`` or ``stop``); the worker answers each
with one JSON line (``status`` ``ready``, ``ok``, ``done`` or ``error`` with a traceback).
What the worker does with the spec is :func:`benchmarks.variants.serve_variant`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]
"""The repository checkout holding ``benchmarks/`` and the ``helpers/`` the workers import."""

WORKER_COMMAND = "from benchmarks.worker import worker_main; worker_main()"


def rss_mb(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` in MB (``VmHWM`` peak resident, ``VmRSS``
    current resident); None where there is no ``/proc`` (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (``VmHWM``, else ``ru_maxrss``)."""
    peak = rss_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    kilo = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilo / 2**20 if sys.platform == "darwin" else kilo / 1024  # bytes on macOS, else KB


def worker_main() -> None:
    """Entry point of a worker process: serve one variant over stdin and stdout.

    What importing torch and torchvision costs is measured before anything else is imported.
    Replies go to the original stdout; anything else the process prints is sent to stderr,
    so that it cannot corrupt the replies. A failure is reported as a reply, with its
    traceback, for the parent to raise.
    """
    import torch  # noqa: F401  (imported first, to measure what importing it costs)
    import torchvision  # noqa: F401

    import_rss_mb = peak_rss_mb()  # Python + torch + torchvision alone: a large fixed share
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        from benchmarks.variants import serve_variant  # the variant's work, with helpers

        serve_variant(json.loads(sys.stdin.readline()), send, sys.stdin, import_rss_mb)
    except BaseException:  # the parent raises with this traceback
        send({"status": "error", "traceback": traceback.format_exc()})
    channel.close()
    sys.stderr.flush()
    os._exit(0)  # everything is reported; skip the interpreter's slow teardown of torch


def start_worker(spec: dict[str, Any]) -> subprocess.Popen:
    """A fresh Python process running :func:`worker_main`, given ``spec``.

    A subprocess, not ``multiprocessing``: it works from scripts without a main guard. It
    runs in :data:`CHECKOUT`, with the checkout first on its path, so that it imports this
    ``benchmarks`` and the ``helpers`` beside it, not an installed copy.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_COMMAND],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=CHECKOUT,
        env=env,
    )
    send_line(process, json.dumps(spec))
    return process


def send_line(process: subprocess.Popen, text: str) -> None:
    """One line to a worker's stdin: the spec or a command."""
    process.stdin.write(text + "\n")
    process.stdin.flush()


def receive(process: subprocess.Popen, name: str) -> dict[str, Any]:
    """A worker's next reply; a clear error naming the variant when it failed or died."""
    line = process.stdout.readline()
    if not line:
        code = process.wait(30)
        raise RuntimeError(
            f"bench train: the {name} worker ended without a reply (exit code {code}; "
            "killed for memory?)"
        )
    message = json.loads(line)
    if message["status"] == "error":
        raise RuntimeError(f"bench train: the {name} worker failed:\n{message['traceback']}")
    return message


def run_interleaved(
    variants: dict[str, dict[str, Any]], common: dict[str, Any], repeats: int
) -> dict[str, dict[str, Any]]:
    """Time training epochs of several variants, each in its own process, interleaved.

    The workers start (and warm up, untimed) together; then each round times one epoch of
    every variant in turn (A B A B ...), so that a slow patch of a shared machine hits all
    variants alike and per-round ratios stay fair. Returns, per variant, the per-round
    ``seconds`` and ``data_seconds``, the warm-up time ``setup_s``, and the worker's
    resident memory after importing torch (``import_rss_mb``), after warm-up
    (``ready_rss_mb``) and at its peak (``peak_rss_mb``), and its peak CUDA memory
    (``peak_gpu_mb``, None on CPU).
    """
    workers: dict[str, subprocess.Popen] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, variant in variants.items():  # start together: imports and warm-up overlap
            workers[name] = start_worker({**common, **variant})
        for name, process in workers.items():
            results[name] = {"seconds": [], "data_seconds": [], **receive(process, name)}
        for _ in range(repeats):
            for name, process in workers.items():
                send_line(process, "epoch")
                timing = receive(process, name)
                results[name]["seconds"].append(timing["seconds"])
                results[name]["data_seconds"].append(timing["data_seconds"])
        for name, process in workers.items():
            send_line(process, "stop")
            done = receive(process, name)
            results[name].update(peak_rss_mb=done["peak_rss_mb"], peak_gpu_mb=done["peak_gpu_mb"])
    finally:
        for process in workers.values():
            close_worker(process)
    return results


def close_worker(process: subprocess.Popen) -> None:
    """Wait for a worker to exit (normally it already has), killing it if it hangs."""
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
