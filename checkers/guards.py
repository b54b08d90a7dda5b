"""Guards the checks run student code under: no attention shortcuts, no device mixing, no tampering."""
import ast
import sys
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# ---- attention shortcuts ---------------------------------------------------------------------
FORBIDDEN_NAMES = {
    "scaled_dot_product_attention", "multi_head_attention_forward", "MultiheadAttention", "Transformer",
    "TransformerEncoder", "TransformerEncoderLayer", "TransformerDecoder", "TransformerDecoderLayer",
    "_native_multi_head_attention", "_transformer_encoder_layer_fwd",
}
FORBIDDEN_MODULES = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerEncoderLayer,
                     nn.TransformerDecoder, nn.TransformerDecoderLayer)
_FORBIDDEN_FUNCS = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
_FORBIDDEN_FRAGMENTS = ("scaled_dot_product", "multi_head_attention", "transformer_encoder", "flash_attention")


class ForbiddenShortcut(BaseException):
    """Raised when student code reaches a built-in attention function (BaseException: `except Exception` won't hide it)."""


def scan_source(source: str, filename: str) -> list:
    """Forbidden names reached through torch in the code (comments and docstrings are ignored).

    The student's own `scaled_dot_product_attention` from lab 1 is fine; `F.scaled_dot_product_attention`
    (or the same name imported from torch) is not.
    """
    tree = ast.parse(source, filename)
    torch_aliases, hits = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "torch"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for a in node.names:
                if a.name in FORBIDDEN_NAMES:
                    hits.append(f"line {node.lineno}: from {node.module} import {a.name}")
                torch_aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in torch_aliases:
                hits.append(f"line {node.lineno}: {ast.unparse(node)}")
    return hits


def reject(hits: list):
    """Fail the lab as forbidden (not just this check) when a shortcut was found."""
    if hits:
        raise ForbiddenShortcut("built-in attention is not allowed here: " + "; ".join(hits))


def forbidden_submodules(module: nn.Module) -> list:
    return [f"{name or 'model'} ({type(m).__name__})" for name, m in module.named_modules() if isinstance(m, FORBIDDEN_MODULES)]


HIT_LISTENERS = []  # the runner reports each hit at once, so a student `except BaseException` cannot hide it


class ShortcutGuard(TorchFunctionMode):
    """Catches a built-in attention call however it was reached (an alias, getattr, a module made in forward)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if func in _FORBIDDEN_FUNCS or any(f in name for f in _FORBIDDEN_FRAGMENTS):
            for listener in HIT_LISTENERS:
                listener(name)
            raise ForbiddenShortcut(f"the code called torch's built-in `{name}`")
        return func(*args, **(kwargs or {}))


# ---- device discipline -------------------------------------------------------------------------
class DeviceMixError(RuntimeError):
    pass


_COPIES = {"copy_", "_to_copy", "to", "lift_fresh", "_copy_from", "_copy_from_and_resize"}


class DeviceGuard(TorchDispatchMode):
    """Raises when one op's tensors live on more than one device (0-dim CPU scalars excepted, copies allowed).

    The meta device alone misses the matmul family and embedding/index ops with CPU indices; this closes that gap.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__.split(".")[0] not in _COPIES:
            devices = {t.device for t in tree_leaves((args, kwargs))
                       if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise DeviceMixError(f"`{func.__name__.split('.')[0]}` got tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


# ---- tampering ---------------------------------------------------------------------------------
def _namespaces():
    import _pytest.reports
    import torch.testing
    spaces = {"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor, "torch.testing": torch.testing,
              "torch.nn.Module": nn.Module, "_pytest.reports": _pytest.reports,
              "_pytest.reports.TestReport": _pytest.reports.TestReport}
    spaces.update({name: mod for name, mod in sys.modules.items() if name.startswith("checkers.")})
    return spaces


_MISSING = object()
# rebound by torch's own API (torch.set_default_dtype rebinds torch.Storage) or by the warnings machinery
_EXPECTED_CHANGES = {"torch.Storage", "__warningregistry__"}


class Snapshot:
    """Identity of every attribute of torch, the checkers and pytest's reports, taken before student code runs."""

    def __init__(self):
        self.saved = {name: dict(vars(ns)) for name, ns in _namespaces().items()}

    def changed(self) -> list:
        """Attributes replaced, removed or added since (a lazily imported submodule is not a change)."""
        out = []
        for name, ns in _namespaces().items():
            before, now = self.saved.get(name), dict(vars(ns))
            if before is None:
                continue
            out += [f"{name}.{key}" for key in before.keys() | now.keys()
                    if before.get(key, _MISSING) is not now.get(key, _MISSING)
                    and not isinstance(now.get(key), ModuleType) and not {f"{name}.{key}", key} & _EXPECTED_CHANGES]
        return sorted(out)


# ---- the two guarded checks every lab runs ---------------------------------------------------------
def expect_no_shortcuts(lab_module, run, model: nn.Module = None):
    """No forbidden name in the lab's source or module tree, and none reached while `run()` executes."""
    path = lab_module.__file__
    with open(path) as f:
        hits = scan_source(f.read(), path)
    reject(hits + (forbidden_submodules(model) if model is not None else []))
    with ShortcutGuard():
        run()


def expect_device_discipline(model: nn.Module, example: torch.Tensor, what: str):
    """Run `model(example)` with both on another device (CUDA when checking there, else meta) under DeviceGuard."""
    from checkers.common import device, fail
    target = device() if device().type == "cuda" else torch.device("meta")
    model = model.to(target)
    with DeviceGuard():
        try:
            out = model(example.to(target))
        except RuntimeError as exc:  # DeviceMixError, or torch's own device mismatch
            fail(f"{what} failed with the module and its input on {target.type}: {exc}", "device")
    if out.device.type != target.type:
        fail(f"{what}: input on {target.type}, output on {out.device}.", "device")
