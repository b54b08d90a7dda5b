"""Best-effort guards the worker runs student code under. They report; the judge decides.

Code in the worker's process can disable anything here, so none of it is a defence on its own: the judge's
static scan of the source (judge/static.py) is what rules on shortcuts, and every verdict is computed in the
judge. What these add is a clear message for the honest student who reaches a built-in by accident.
"""
import functools
import sys
from types import CodeType, FunctionType, ModuleType
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

from pack.labs import FORBIDDEN, FRAGMENTS

# the registry's forbidden built-ins (pack/labs.py), resolved to torch's objects: one list for the scan and for this
FORBIDDEN_MODULES = tuple(getattr(nn, n) for n in FORBIDDEN if isinstance(getattr(nn, n, None), type))
_FORBIDDEN_FUNCS = {getattr(F, n) for n in FORBIDDEN if callable(getattr(F, n, None))}
_FORBIDDEN_FRAGMENTS = FRAGMENTS


class ForbiddenShortcut(BaseException):
    """Raised when student code reaches a built-in attention function (BaseException: `except Exception` won't hide it)."""


class ShortcutGuard(TorchFunctionMode):
    """Notes a built-in attention call however it was reached (an alias, getattr, a module made in forward).

    The pack's stand-ins for earlier labs may call it: a call is let through when the innermost frame of the lab
    folder on the stack runs code of a stand-in (`trusted`: ids of code objects taken when the stand-ins were
    imported, before any student code ran)."""

    def __init__(self, hits: list, trusted: set = frozenset(), lab_dir: str = None):
        super().__init__()
        self.hits, self.trusted, self.lab_dir = hits, trusted, lab_dir
        # functions seen to be none of the forbidden ones: a training step makes ~700 calls of a few dozen functions,
        # so the name test runs once per function, not per call (a forbidden one is tested at every call: whether
        # it is let through depends on its caller)
        self.allowed = set()

    def _from_stand_in(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None and self.trusted:
            if id(frame.f_code) in self.trusted:
                return True
            if self.lab_dir and frame.f_code.co_filename.startswith(self.lab_dir):
                return False
            frame = frame.f_back
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            known = func in self.allowed
        except TypeError:  # an unhashable callable: tested at every call
            known = False
        if not known:
            name = getattr(func, "__name__", "")
            if func in _FORBIDDEN_FUNCS or any(f in name for f in _FORBIDDEN_FRAGMENTS):
                if not self._from_stand_in():
                    self.hits.append(name)
                    raise ForbiddenShortcut(f"the code called torch's built-in `{name}`")
            else:
                try:
                    self.allowed.add(func)
                except TypeError:
                    pass
        return func(*args, **(kwargs or {}))


def code_objects(module) -> list:
    """Every code object defined in `module` (functions, methods, nested functions and lambdas)."""
    found, todo, seen = [], list(vars(module).values()), set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, FunctionType) and obj.__module__ == module.__name__:
            todo.append(obj.__code__)
        elif isinstance(obj, CodeType):
            found.append(obj)
            todo += [c for c in obj.co_consts if isinstance(c, CodeType)]
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            todo += list(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo += [f for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
    return found


class DeviceMixError(RuntimeError):
    pass


_COPIES = {"copy_", "_to_copy", "to", "lift_fresh", "_copy_from", "_copy_from_and_resize"}


class DeviceGuard(TorchDispatchMode):
    """Raises when one op's tensors live on more than one device (0-dim CPU scalars excepted, copies allowed).

    The meta device alone misses the matmul family and embedding/index ops with CPU indices; this closes that gap.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.check(func, tree_leaves((args, kwargs)))
        return func(*args, **kwargs)

    @staticmethod
    def check(func, leaves: list):
        if _kind(func).name not in _COPIES:
            devices = {t.device for t in leaves
                       if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise DeviceMixError(f"`{_kind(func).name}` got tensors on {sorted(map(str, devices))}")


class _Kind(NamedTuple):
    """What the probe needs to know of an op, read once from its schema (`_kind`): its base name, and whether it is
    functional (mutates none of its arguments and returns no alias of them), so that its outputs on meta are
    fresh tensors whose shapes, strides and dtypes are those its shadow run produced."""
    name: str
    functional: bool


@functools.lru_cache(maxsize=None)
def _kind(func) -> _Kind:
    schema = getattr(func, "_schema", None)
    return _Kind(func.__name__.split(".")[0], schema is not None and not schema.is_mutable
                 and all(r.alias_info is None for r in schema.returns))


class MetaValueError(RuntimeError):
    """An op of the device probe needed values the meta device does not have: the probe's limit, not the code's."""


_NO_SHADOW = object()
META = torch.device("meta")
CPU = torch.device("cpu")


_FROM_DATA = ("tensor", "as_tensor", "asarray")  # torch's constructors from data, which bypass the dispatcher


def _from_data(make):
    def made(*args, **kwargs):
        device = kwargs.get("device")
        try:
            meta = device is not None and torch.device(device) == META
        except (RuntimeError, TypeError):
            meta = False
        if meta:
            grad = kwargs.get("requires_grad", False)
            try:
                host = make(*args, **{k: v for k, v in kwargs.items() if k not in ("device", "requires_grad")})
            except (RuntimeError, TypeError, ValueError):  # data on meta, or arguments it refuses: torch says why
                host = None
            if isinstance(host, torch.Tensor) and host.device.type == "cpu" and type(grad) is bool:
                return host.to(META).requires_grad_(grad)  # the copy to meta is dispatched: it gets a shadow
        return make(*args, **kwargs)
    made.__wrapped__ = make
    return made


def _on_meta(value):
    """A tensor's like on meta (same shape, strides and dtype); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.size(), value.stride(), dtype=value.dtype, device=META)


class MetaShadow(DeviceGuard):
    """The device guard for a run on the meta device, which has shapes but no values: every meta tensor carries a
    CPU shadow holding its values (`shadows`, a weak dict filled when the grader moves a module or an input to
    meta), and each op on meta tensors runs on their shadows too. So code that reads a value (`if mask.all():`,
    `.item()`, `torch.nonzero`, `.tolist()`) gets the value it would get on a real device, while every op still
    runs on meta, where a tensor made without the input's device shows up as a second device. A functional op's
    outputs on meta are made from its shadow's outputs (meta's own kernels, many of them written in Python, would
    cost more than the op); an op that mutates or returns a view runs on meta itself, so aliasing stays as it is.
    An op whose shadows are missing (a tensor the grader did not give) runs on meta alone, as before."""

    def __init__(self, shadows):
        super().__init__()
        self.shadows = shadows
        self.saved = {}

    def __enter__(self):
        # torch.tensor(data, device=...) and its kin make a tensor from Python data without passing the dispatcher:
        # while the probe runs, one for meta is made on the CPU and copied to meta, so that it has a shadow too
        self.saved = {name: getattr(torch, name) for name in _FROM_DATA}
        for name, make in self.saved.items():
            setattr(torch, name, _from_data(make))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, make in self.saved.items():
            setattr(torch, name, make)
        self.saved = {}
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, spec = tree_flatten((args, kwargs))
        self.check(func, leaves)
        on_meta = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves)
        if not on_meta and kwargs.get("device") != META:
            return func(*args, **kwargs)
        shadowed = []
        for t in leaves:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                t = self.shadows.get(t, _NO_SHADOW)
                if t is _NO_SHADOW:
                    break
            elif isinstance(t, torch.device) and t == META:
                t = CPU
            shadowed.append(t)
        else:
            return self._shadowed(func, args, kwargs, *tree_unflatten(shadowed, spec))
        try:
            return func(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc).lower():
                raise
            raise MetaValueError(f"`{_kind(func).name}` needs the values of a tensor that the "
                                 "grader's device probe (on the meta device) holds none for") from None

    def _shadowed(self, func, args, kwargs, s_args, s_kwargs):
        try:
            s_out = func(*s_args, **s_kwargs)
        except Exception:  # noqa: BLE001: the shadow is a help; the run on meta decides
            return func(*args, **kwargs)
        kind = _kind(func)
        to_host = kind.name in _COPIES and kwargs.get("device") not in (None, META)
        if to_host:  # a copy out of meta: meta has no values to give, its shadow has
            return s_out
        if kind.functional:
            out = tree_map(_on_meta, s_out)
        else:
            try:
                out = func(*args, **kwargs)
            except (NotImplementedError, RuntimeError):  # meta has no value (item, nonzero)
                out = tree_map(_on_meta, s_out)
        for a, b in zip(tree_leaves(out), tree_leaves(s_out)):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device.type == "meta":
                self.shadows[a] = b
        return out


_MISSING = object()
# rebound by torch's own API (torch.set_default_dtype rebinds torch.Storage) or by the warnings machinery
_EXPECTED_CHANGES = {"torch.Storage", "__warningregistry__"}


def _namespaces() -> dict:
    import torch.testing
    return {"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor, "torch.testing": torch.testing,
            "torch.nn.Module": nn.Module}


class Snapshot:
    """Identity of every attribute of torch's main namespaces, taken before student code runs."""

    def __init__(self):
        self.saved = {name: dict(vars(ns)) for name, ns in _namespaces().items()}

    def changed(self) -> list:
        """Attributes replaced, removed or added since (a lazily imported submodule is not a change)."""
        out = []
        for name, ns in _namespaces().items():
            before, now = self.saved[name], dict(vars(ns))
            out += [f"{name}.{key}" for key in before.keys() | now.keys()
                    if before.get(key, _MISSING) is not now.get(key, _MISSING)
                    and not isinstance(now.get(key), ModuleType) and not {f"{name}.{key}", key} & _EXPECTED_CHANGES]
        return sorted(out)
