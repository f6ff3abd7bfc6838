"""How many CPU threads torch should use: the cores that are idle when the program starts.

On a small machine (Colab's 2 vCPUs, a laptop) something else is often running: another
notebook, a test suite, a second training run. torch's default is one thread per core, and a
thread that has to share its core with another busy process holds up every parallel operation
waiting for it. Measured on a 2-core machine with one other CPU-bound process, one thread
trained about twice as fast as torch's default, while on the idle machine the default was
fastest (``benchmarks/threads.py``, figures in ``benchmarks/README.md``). So the rule is:
count the cores that are busy right now, and give torch the others (at least one).

:func:`use_idle_cores` runs when :mod:`helpers` is imported, before torch in the command line
and in the notebooks' setup cell. An ``OMP_NUM_THREADS`` set by the user always wins. CPU
results depend on the thread count in their last digits, so a run records it
(``config.json``) and a resumed run keeps it (:mod:`helpers.train`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

STAT = Path("/proc/stat")
WINDOW_S = 0.2
"""How long the machine is watched: long enough to see a busy process, short at start-up."""


def _cpu_times() -> tuple[int, int] | None:
    """``(idle, total)`` jiffies of all CPUs together, from ``/proc/stat`` (Linux only)."""
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values)


def busy_cores(window_s: float = WINDOW_S) -> float | None:
    """How many cores other programs keep busy right now (None where it cannot be read)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(window_s)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    idle_share = (after[0] - before[0]) / (after[1] - before[1])
    return (1.0 - idle_share) * (os.cpu_count() or 1)


def idle_core_threads() -> int | None:
    """The number of threads to use, or None to keep torch's default (an idle machine)."""
    cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None or busy < 0.5:
        return None
    return max(1, cores - round(busy))


def use_idle_cores() -> None:
    """Limit torch to the idle cores when the machine is busy (unless ``OMP_NUM_THREADS`` is
    set). Before torch is imported this sets ``OMP_NUM_THREADS``; after, it calls
    ``torch.set_num_threads``."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    threads = idle_core_threads()
    if threads is None:
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
