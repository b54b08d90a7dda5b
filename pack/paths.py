"""Paths the grader hides or makes private (standard library only: the parent and the zygote use it)."""
import os


def covering(paths) -> tuple:
    """The fewest folders that hide all of `paths`: one inside another is dropped (a class's 5,000 folders inside
    the batch folder cost one entry in every worker's spec and one mount in its namespace, not 5,000)."""
    kept = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=lambda p: p.split(os.sep)):
        if not kept or not (path == kept[-1] or path.startswith(kept[-1].rstrip(os.sep) + os.sep)):
            kept.append(path)
    return tuple(kept)
