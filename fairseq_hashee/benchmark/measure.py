"""How the benchmark measures: FLOPs, peak memory and wall-clock of every configuration of a setting.

Counting comes first, for every setting, with the allocator set so that the
resident set follows live tensors (peak memory); timing follows with the
allocator's warm settings. Configurations are timed interleaved, one run of
each per round, so drift of the machine between rounds hits all alike; the
report (report.py) takes each round's ratios.
"""

import contextlib
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..modules import flops
from .operators import operators_per_call
from .settings import STOCK, Models, Setting, configs, runner


def peak_memory(fn: Callable[[], None], device) -> Optional[float]:
    """Peak memory (MiB) while ``fn`` runs: CUDA's allocator peak, or on Linux the
    process's resident-set high-water mark (reset through /proc/self/clear_refs)
    above its resident set before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        fn()
        return _proc_status("VmHWM") - before
    except (OSError, KeyError):
        return None


@contextlib.contextmanager
def resident_set_follows_live_memory(device):
    """Within the block, make the CPU resident set follow live tensors.

    glibc serves large blocks with mmap only until the first ones are freed,
    then raises that threshold (up to 32 MiB on 64-bit) and keeps freed
    activations resident, so the peak of one configuration would hide inside
    the leftovers of another. A fixed 64 KiB threshold from the start turns
    that off. Timing must not run that way (every large tensor would be a
    fresh mapping, page faults included, a cost a running process does not
    pay), so on exit the allocator gets the settings glibc itself reaches
    once warm, for good: switching back and forth leaves the heap in a state
    whose peaks are no longer comparable.
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield  # CUDA measures its own allocator; elsewhere the peak is approximate
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 10)
    libc.mallopt(m_trim_threshold, 64 << 10)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "mallopt") else None


def _proc_status(field: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def timed(fn: Callable[[], None], device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_setting(setting: Setting, models: Models, args, dictionary, device) -> Tuple[dict, dict]:
    """FLOPs report, peak memory and operators launched (per encoder forward or decoder step)
    of every configuration, from one run each after a warm-up pass (the meter only adds up
    numbers the stacks compute anyway), and one more run counting operators."""
    prepare = runner(setting, models, args, dictionary)
    names = configs(models, setting, args.configs)
    counts, memory = {}, {}
    with torch.inference_mode():
        for c in names:
            prepare(c)[1]()
        for c in names:
            model, fn = prepare(c)
            if c == STOCK:
                memory[c] = peak_memory(fn, device)
                counts[c] = {}
            else:
                with flops.measuring(model) as meter:
                    memory[c] = peak_memory(fn, device)
                counts[c] = flops.speedup_report(meter.sums)
                counts[c]["sums"] = dict(meter.sums)
            counts[c]["operators"] = operators_per_call(model, fn, setting.kind)
    return counts, memory


def time_setting(setting: Setting, models: Models, args, dictionary, device, repeats: int) -> Dict[str, List[float]]:
    """Wall-clock seconds of every configuration, ``repeats`` times, interleaved
    so that drift of the machine hits all alike.

    Every configuration ran twice when counting; a warm-up pass here absorbs the
    allocator's move to its warm settings. Generation runs last seconds each, so
    there one run of the first configuration is enough for that."""
    prepare = runner(setting, models, args, dictionary)
    names = configs(models, setting, args.configs)
    walls = {c: [] for c in names}
    with torch.inference_mode():
        for c in names if setting.kind == "encoder" else names[:1]:
            prepare(c)[1]()
        for _ in range(repeats):
            for c in names:
                fn = prepare(c)[1]
                walls[c].append(timed(fn, device))
    return walls
