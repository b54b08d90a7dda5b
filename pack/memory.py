"""A memory cap on the grader's own work on a submission's text (standard library only).

Workers have `--memory`; the parent's read of a notebook and the judge's scan of a lab's text run in the grader's
own processes. `capped(gib)` lowers this process's soft RLIMIT_DATA to what it uses now plus `gib` for the
duration, so a text built to make a parse grow raises MemoryError there (turned into that submission's refusal)
instead of taking the machine; the limit is restored afterwards.
"""
import contextlib
import resource

GIB = 1 << 30


def data_bytes() -> int:
    """This process's data segment and private memory now (VmData), in bytes; 0 where /proc cannot say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextlib.contextmanager
def capped(gib: float):
    """Within the block, at most `gib` GiB more of data memory (no cap where the platform has no RLIMIT_DATA or
    /proc cannot say how much is in use, or for gib <= 0)."""
    now = data_bytes()
    limit = getattr(resource, "RLIMIT_DATA", None)
    if limit is None or not now or not gib or gib <= 0:
        yield
        return
    soft, hard = resource.getrlimit(limit)
    cap = now + int(gib * GIB)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(limit, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(limit, (soft, hard))
