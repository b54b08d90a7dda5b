"""Comparisons: the student's tensors (decoded from the worker's answers) against the judge's expected values.

Failures report the max abs error, the tolerance, the first offending index and the values around it.
"""
import torch

from judge.checks import fail

Tensor = torch.Tensor


def randn(*shape, dtype=None) -> Tensor:
    """Seeded normal noise (the runner seeds each check)."""
    return torch.randn(*shape, dtype=dtype)


SHOWN = 3  # values of a row shown around the first mismatch


def _window(n: int, at: int) -> int:
    """Where a window of SHOWN values around position `at` of a row of n starts."""
    return max(0, min(at - 1, n - SHOWN))


def _fmt(t: Tensor, start: int = 0) -> str:
    flat = t.reshape(-1)
    values = [f"{v:.4f}" for v in flat[start:start + SHOWN].tolist()]
    return ("[..., " if start else "[") + ", ".join(values) + (", ...]" if start + SHOWN < flat.numel() else "]")


def matches(want: Tensor, got) -> bool:
    """A diagnosis's test: got has want's shape and every value within 1e-4 of it."""
    return isinstance(got, Tensor) and got.device.type != "meta" and want.shape == got.shape and \
        bool(((want - got.to(want.dtype)).abs() < 1e-4).all())


def first_match(variants: dict, x: Tensor, got, again=None, default: str = None) -> str:
    """Diagnose `got`: the first hint one of whose variants (functions of x) reproduces it; "dropout" when `again()`
    (the same forward once more) gives something else; `default` otherwise."""
    for hint, fns in variants.items():
        if any(matches(fn(x), got) for fn in fns):
            return hint
    if again is not None and not torch.equal(again(), got):
        return "dropout"
    return default


def expect_tensor(actual, what: str, shape=None, hint=None) -> Tensor:
    if not isinstance(actual, Tensor):
        fail(f"{what}: expected a torch.Tensor, got {getattr(actual, 'type_name', type(actual).__name__)}.", hint)
    if shape is not None and tuple(actual.shape) != tuple(shape):
        fail(f"{what}: expected shape {tuple(shape)}, got {tuple(actual.shape)}.", hint)
    return actual


def expect_close(actual, expected: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint=None,
                 fallback=None):
    """Fail with the max abs error and the values around the first mismatch unless
    |actual - expected| <= atol + rtol*|expected|. `hint` may diagnose (see fail); `fallback` when it cannot."""
    expect_tensor(actual, what, expected.shape, hint)
    if actual.device.type == "meta":
        fail(f"{what}: came back on the meta device, with no values.", hint)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    err = (a - e).abs()
    finite = ~(a.isnan() | e.isnan())
    bad = (err > atol + rtol * e.abs()) | (a.isnan() != e.isnan()) | (err.isinf() & finite)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    max_err = float(err[finite].max()) if bool(finite.any()) else float("nan")
    where = f" at index {list(index)}" if index else ""
    nans = int((a.isnan() & ~e.isnan()).sum())
    if nans:  # the largest error among the finite values would hide the real problem
        message = f"{what}: {nans} value(s) came back NaN where the reference has numbers; first mismatch{where}."
    else:
        message = (f"{what}: mismatch with the reference, max abs error {max_err:.3g} "
                   f"(tolerance {atol:g} + {rtol:g}*|expected|); first mismatch{where}.")
    if a.dim() >= 1:
        row, start = index[:-1], _window(a.shape[-1], index[-1])
        where = f"row {list(row)}" + (f" from column {start}" if start else "")
        message += f"\n  expected {where}: {_fmt(e[row], start)}\n  got      {where}: {_fmt(a[row], start)}"
    fail(message, hint, fallback)


