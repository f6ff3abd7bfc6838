"""How many CPU threads torch should use: the cores that are idle when a program starts.

On a small machine (Colab's 2 vCPUs, a laptop) something else is often running: another
notebook, a test suite, a second training run. torch's default is one thread per core, and a
thread that has to share its core with another busy process holds up every parallel operation
waiting for it. Measured on a 2-core machine with one other CPU-bound process, one thread
trained about twice as fast as torch's default, while on the idle machine the default was
fastest (``benchmarks/threads.py``, figures in ``benchmarks/README.md``). So the rule is:
count the cores this process may run on that are busy right now, and give torch the others
(at least one).

Nothing happens on import. :func:`use_idle_cores` is an explicit call, made by the command
line (:mod:`helpers.cli`) and by the notebooks' setup cell; a program that imports
``helpers`` as a library keeps torch's settings as they were. The call never touches the
environment (no ``OMP_NUM_THREADS`` is set, so child processes are not affected) and does
nothing when the user has set ``OMP_NUM_THREADS``. CPU results depend on the thread count in
their last digits, so a run records it (``config.json``, ``last.pt``) and a resumed run goes
back to it whatever this policy chose (:mod:`helpers.train`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAT = Path("/proc/stat")
WINDOW_S = 0.2
"""How long the machine is watched: long enough to see a busy process, short at start-up."""


def usable_cores() -> list[int]:
    """The CPU numbers this process may run on.

    ``os.sched_getaffinity`` (Linux) honours a container's or ``taskset``'s CPU set, where
    ``os.cpu_count()`` counts every CPU of the host; elsewhere (macOS, Windows) all CPUs.
    """
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cores: list[int]) -> tuple[int, int] | None:
    """``(idle, total)`` jiffies summed over ``cores``, from ``/proc/stat`` (Linux only)."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{n}" for n in cores}
    idle = total = 0
    for line in lines:
        fields = line.split()
        if not fields or fields[0] not in wanted:
            continue
        values = [int(v) for v in fields[1:]]
        idle += values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total += sum(values)
    return (idle, total) if total else None


def busy_cores(window_s: float = WINDOW_S, cores: list[int] | None = None) -> float | None:
    """How many of ``cores`` (default: :func:`usable_cores`) other programs keep busy right
    now, measured over ``window_s`` seconds; None where it cannot be read (not Linux)."""
    cores = usable_cores() if cores is None else cores
    before = _cpu_times(cores)
    if before is None:
        return None
    time.sleep(window_s)
    after = _cpu_times(cores)
    if after is None or after[1] <= before[1]:
        return None
    idle_share = (after[0] - before[0]) / (after[1] - before[1])
    return (1.0 - idle_share) * len(cores)


def idle_core_threads() -> int | None:
    """The number of threads to use, or None to keep torch's default (an idle machine)."""
    cores = usable_cores()
    busy = busy_cores(cores=cores)
    if busy is None or busy < 0.5:
        return None
    return max(1, len(cores) - round(busy))


def use_idle_cores() -> int | None:
    """Give torch the idle cores when the machine is busy; return the count set, or None.

    Nothing is done when ``OMP_NUM_THREADS`` is set (the user's choice wins) or when the
    machine is idle (torch's default, one thread per usable core, is then fastest). Sets
    ``torch.set_num_threads`` only: the environment is left as it is.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    threads = idle_core_threads()
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    return threads
