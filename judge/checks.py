"""What a check is made of: its points and visibility, its verdict (CheckFailure, Skipped) and its figures.

A check is a function `test_<property>(w)` of a checker module, marked `@points(n)`; its first docstring line is what
the scorecard shows. It passes by returning (a list of Figures, or nothing) and fails by raising CheckFailure, through
`fail`; the figures it attaches travel on its result (judge/runner.py), never in a global.
"""
import torch

from pack.hints import HINTS
from protocol.messages import Figure


class CheckFailure(AssertionError):
    """A check's verdict: what was expected, what came back, which mistake it points at (a HINTS key), the figures
    that show it, and (`blame`) the earlier lab at fault when it is not this one."""

    def __init__(self, message: str, hint: str = None, blame: str = None, figures=()):
        super().__init__(message)
        self.hint, self.blame, self.figures = hint, blame, list(figures)


class Skipped(Exception):
    """The check does not apply to this submission; the message says why (it neither passes nor fails)."""


def known_hint(key):
    """`key` itself when it is a HINTS key or None; a KeyError (the grader's bug, loud) otherwise."""
    if key is not None and key not in HINTS:
        raise KeyError(f"no hint {key!r} in pack/hints.py")
    return key


def fail(message: str, hint=None, fallback=None, figures=()):
    """Fail the check; `hint` is a HINTS key, or a callable returning one (run only on failure, to diagnose). A
    diagnosis that raises or finds nothing gives `fallback`: the verdict never depends on it."""
    if callable(hint):
        try:
            hint = hint()
        except Exception:
            hint = None
    raise CheckFailure(message, known_hint(hint if hint is not None else fallback), figures=figures)


def points(n: int, hidden: bool = False):
    """Mark a check with the points it is worth (the parent reads them from the checker's source before any
    process starts). A hidden check is held back for the submission: the student release leaves it out."""
    def mark(fn):
        fn.points, fn.hidden = n, hidden
        return fn
    return mark


def grid(t) -> list:
    """The first (T, T) matrix of a (..., T, T) tensor, as rounded floats."""
    t = t.detach().to("cpu", torch.float64)
    return [[round(float(v), 3) for v in row] for row in t.reshape(-1, t.size(-2), t.size(-1))[0].tolist()]


def heatmap(got, want, title: str) -> list:
    """[the student's attention weights beside the expected ones], or [] when `got` cannot be drawn."""
    if isinstance(got, torch.Tensor) and got.dim() >= 2 and got.shape[-2:] == want.shape[-2:] \
            and got.device.type != "meta":
        return [Figure("heatmap", title=title, got=grid(got), want=grid(want))]
    return []


def attach(figures):
    """A context in which a CheckFailure carries `figures` (a list, or a callable making one on failure only)."""
    return _Attach(figures)


class _Attach:
    def __init__(self, figures):
        self.figures = figures

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, CheckFailure):
            try:
                exc.figures += self.figures() if callable(self.figures) else self.figures
            except Exception:  # a figure is an extra: the verdict stands without it
                pass
        return False
