"""Where the steps' torch and faiss work runs: the device, and CPU thread settings (one call per process, cheap).

Two measured problems, both from OpenMP (used by torch's CPU kernels and by faiss):

- Busy-waiting. By default OpenMP worker threads spin between parallel regions. When the
  process does not have every core to itself (other processes on a shared machine, two
  kfp.local shards running side by side, a pod throttled by its CPU limit), the spinning
  threads steal the CPU from the thread doing the work: on 2 shared cores the demo UNet ran
  8x slower at batch 20 with 2 threads than with 1 (bench/RESULTS.md). ``OMP_WAIT_POLICY=
  PASSIVE`` makes idle threads sleep instead; it only takes effect if set before the OpenMP
  runtime loads, i.e. before torch or faiss is first imported, so the modules that import
  them call :func:`prefer_passive_waiting` first.
- Too many threads. torch and faiss default to one thread per CPU of the *machine*; in a
  Kubernetes pod with ``cpu: 2`` on a 64-core node that is 64 threads on 2 CPUs.
  :func:`cpu_budget` also honours the cgroup CPU quota, and the configure functions only
  ever *lower* the thread count to it (a caller that chose fewer threads keeps its choice).

An explicit ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` in the environment always wins.

:func:`resolve_device` turns a config's ``device`` into a ``torch.device`` for models and
embeddings alike, so that "auto", a typo and a missing GPU mean the same everywhere.
"""

from __future__ import annotations

import functools
import math
import os
from typing import TYPE_CHECKING

from privevo.errors import UserError

if TYPE_CHECKING:
    import torch


def prefer_passive_waiting() -> None:
    """Idle OpenMP threads sleep rather than spin (unless the environment says otherwise)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota if any."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The CPU limit in CPUs from cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``; None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as handle:
            quota_us = int(handle.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as handle:
            period_us = int(handle.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


CONCURRENT_SHARDS_ENV = "PRIVEVO_CONCURRENT_SHARDS"


def shard_cpu_budget() -> int:
    """CPUs for one shard step: :func:`cpu_budget` split between the shards running side by side.

    On a cluster each shard is a pod with its own budget and the variable is unset. Under
    kfp.local, ``pipeline.py run`` sets it: its ParallelFor runs up to 2 shards at once on one
    machine, and 2 processes of 2 threads on 2 cores ran generation 0 1.6x slower than 1 process.
    """
    try:
        concurrent = max(1, int(os.environ.get(CONCURRENT_SHARDS_ENV, "1")))
    except ValueError:
        concurrent = 1
    return max(1, cpu_budget() // concurrent)


def configure_torch_threads(budget: int | None = None) -> None:
    """At most one torch intra-op thread per CPU of ``budget`` (default: :func:`cpu_budget`); keeps a lower setting."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    budget = budget or cpu_budget()
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)


def configure_faiss_threads() -> None:
    """At most one faiss OpenMP thread per CPU of the budget (a lower setting is kept)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import faiss

    budget = cpu_budget()
    if faiss.omp_get_max_threads() > budget:
        faiss.omp_set_num_threads(budget)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux's /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return frozenset(next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_native_bf16(bandwidth_bound: bool = False) -> bool:
    """Whether bfloat16 beats float32 on this CPU: with bfloat16 matrix units (AMX) always; with AVX512-BF16's
    dot-product instructions alone only for ``bandwidth_bound`` work.

    AVX512-BF16 alone is not enough for compute-bound work: on a 2-core Xeon with it but without AMX,
    the demo UNet ran about 15% slower in bfloat16 autocast than in float32 (bench/bench_models.py);
    with AMX it ran 2.3x faster (bench/RESULTS.md). A language model's token-by-token decoding is
    bound by reading its weights, which bfloat16 halves: SmolLM2-135M decoded 1.5x faster in bfloat16
    than in float32 on a 2-core AMD EPYC with AVX512-BF16 and no AMX (bench/RESULTS.md, "Fortunes").
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or (bandwidth_bound and "avx512_bf16" in flags)


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device a config names: "auto" is cuda when available, else cpu; an unusable one is a UserError."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device {device!r} is not valid: use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available: use device 'auto' or 'cpu'")
    return resolved


#: How a step over the private set logs: no time stamp (the gaps between its lines grow with the private set's size).
UNTIMED_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def untimed_logging() -> None:
    """From now on this process logs without time stamps: called by the steps that read the private set, whose log
    goes to the released tier (a pod's log, kfp.local's log file)."""
    import logging

    loggers = [logging.getLogger(), *(one for one in list(logging.root.manager.loggerDict.values())
                                      if isinstance(one, logging.Logger))]
    for handler in {handler for one in loggers for handler in one.handlers}:
        handler.setFormatter(logging.Formatter(UNTIMED_LOG_FORMAT))


#: Without a terminal (a pod's log), long work logs one line every this many seconds.
PROGRESS_LOG_SECONDS = 30.0


class Progress:
    """Progress of long work: a tqdm bar on a terminal, a log line every PROGRESS_LOG_SECONDS in a pod.

    tqdm turns itself off without a terminal, so a model step in a pod would print nothing
    for hours; this keeps it saying where it is. ``enabled=False`` shows nothing at all
    (work over the private set, whose size must not reach a log).
    """

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True) -> None:
        import logging
        import sys
        import time

        from tqdm.auto import tqdm

        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self._time, self._logger = time.monotonic, logging.getLogger("privevo.progress")
        self._last = self._time()
        terminal = enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit) if terminal else None
        self._log = enabled and not terminal

    def update(self, count: int) -> None:
        """Count ``count`` more units done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._log and (self._time() - self._last >= PROGRESS_LOG_SECONDS or self.done >= self.total):
            self._last = self._time()
            self._logger.info("%s: %d/%d %s", self.desc, self.done, self.total, self.unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
