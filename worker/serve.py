"""The worker's loop: read a request, run the student's code it names, answer with plain data.

Requests come from the judge (trusted); answers go back as worker/wire.py frames. Objects the student's code
builds stay here, under handle ids, and the judge refers to them by id. An exception in student code becomes
data: its type name, message and the frames from the lab files. Ops (each `op_<name>` below):

    import   module                      import a lab module
    get      module, name, store         a module attribute (stored when it is an nn.Module)
    call     target, args, kwargs, ...   call a function, a class or a method; options: store the result, seed,
                                         no_grad, backward (grads of inputs and parameters), watch a submodule's
                                         forward inputs, resets (was a parameter's .grad cleared each step),
                                         capture lab 1's attention weights, guard against shortcuts,
                                         device_guard (one device per op)
    load     handle, tensors             copy values into parameters and buffers
    state    handle                      every parameter's value
    to       handle, device              move a stored module
    audit                                torch attributes the code replaced, and shortcut hits so far
"""
import importlib
import os
import sys
import traceback
import types

import torch
import torch._dynamo  # noqa: F401  (AdamW and dispatch modes import it lazily, rebinding torch functions)
import torch.nn as nn

from worker.guards import FORBIDDEN_MODULES, DeviceGuard, ForbiddenShortcut, ShortcutGuard, Snapshot, code_objects
from worker.wire import Packer, ProtocolError, read_frame, write_frame

KINDS = {"Linear": nn.Linear, "Embedding": nn.Embedding, "LayerNorm": nn.LayerNorm, "ModuleList": nn.ModuleList,
         "Dropout": nn.Dropout}
MAX_WATCH = 2000


class Missing(Exception):
    """The contract names something the lab module does not define."""


class Server:
    def __init__(self, rfd: int, wfd: int, lab_dir: str, device: str, trusted=()):
        self.rfd, self.wfd, self.lab_dir, self.device = rfd, wfd, lab_dir, torch.device(device)
        self.objects, self.hits = {}, []
        self.snapshot = Snapshot()
        # the pack's stand-ins for earlier labs, imported before any student code: their frames are the grader's
        self.trusted, self.trusted_files, self.kept_codes = set(), set(), []
        for name in trusted:
            module = importlib.import_module(name)
            self.kept_codes += code_objects(module)  # held here, so no id of theirs is ever reused
            self.trusted_files.add(os.path.realpath(module.__file__))
        self.trusted = {id(c) for c in self.kept_codes}

    # ---- the loop ----
    def loop(self):
        while True:
            try:
                header, tensors = read_frame(self.rfd)
            except (ProtocolError, OSError):
                return
            packer = Packer(keep=self.keep)
            try:
                handler = getattr(self, "op_" + str(header.get("op")))
                answer = {"ok": True, "value": packer(handler(header, tensors))}
            except BaseException as exc:  # noqa: B036: the student's code raised it; it becomes data
                answer = {"ok": False, "error": self.describe_error(exc)}
            answer["hits"] = self.hits[-5:]
            try:
                write_frame(self.wfd, answer, packer.tensors)
            except (OSError, ValueError, RuntimeError):
                return

    def keep(self, obj) -> str:
        if not isinstance(obj, nn.Module):
            return None
        key = f"h{len(self.objects)}"
        self.objects[key] = obj
        return key

    def describe_error(self, exc: BaseException) -> dict:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(self.lab_dir)
                  and os.path.realpath(f.filename) not in self.trusted_files]  # a stand-in's lines are not the student's
        if isinstance(exc, SyntaxError) and (exc.filename or "").startswith(self.lab_dir):
            frames.append(traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>", line=(exc.text or "")))
        try:
            message = str(exc)[:2000]
        except Exception:
            message = "?"
        lines = [f'  File "{os.path.basename(f.filename)}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}'
                 for f in frames[-8:]]
        return {"type": type(exc).__name__, "message": message,
                "frames": [[os.path.basename(f.filename), f.lineno or 0, f.name, (f.line or "").strip()[:200]]
                           for f in frames[-8:]],
                "traceback": "\n".join(["Traceback (most recent call last), your files only:"] + lines
                                       + [f"{type(exc).__name__}: {message}"])[-4000:],
                "memory": isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in message,
                "shortcut": isinstance(exc, ForbiddenShortcut)}

    # ---- arguments ----
    def arg(self, value, tensors: dict):
        if type(value) is list:
            return [self.arg(v, tensors) for v in value]
        if type(value) is not dict:
            return value
        if "$tuple" in value:
            return tuple(self.arg(v, tensors) for v in value["$tuple"])
        if "$t" in value:
            t = tensors[value["$t"]].to(value.get("to") or self.device)
            return t.requires_grad_() if value.get("grad") else t
        if "$h" in value:
            return self.objects[value["$h"]]
        return {k: self.arg(v, tensors) for k, v in value.items()}

    def target(self, spec):
        """["module", "lab2_multihead", "MultiHeadAttention"] or ["handle", "h3", "generate"]."""
        kind, owner, name = spec
        obj = self.objects[owner] if kind == "handle" else importlib.import_module(owner)
        path, _, name = name.rpartition(".")
        if path:  # a sub-module of a stored module: "blocks.0.mlp.forward"
            obj = obj.get_submodule(path)
        if not hasattr(obj, name):
            raise Missing(f"{owner if kind == 'module' else type(obj).__name__}.{name}")
        return getattr(obj, name)

    # ---- ops ----
    def op_import(self, req, tensors):
        importlib.import_module(req["module"])
        return None

    def op_get(self, req, tensors):
        value = self.target(req["target"])
        return self.stored(value) if isinstance(value, nn.Module) else value

    def stored(self, obj) -> dict:
        if not isinstance(obj, nn.Module):
            key = f"h{len(self.objects)}"
            self.objects[key] = obj
            return {"handle": key, "describe": {"type": type(obj).__name__, "module": type(obj).__module__}}
        return {"handle": self.keep(obj), "describe": describe(obj)}

    def op_call(self, req, tensors):
        fn = self.target(req["target"])
        args = self.arg(req.get("args", []), tensors)
        kwargs = self.arg(req.get("kwargs", {}), tensors)
        if req.get("seed") is not None:
            torch.manual_seed(req["seed"])
        owner = self.objects.get(req["target"][1]) if req["target"][0] == "handle" else None
        watched, removers, resets = [], [], []
        if req.get("watch"):
            removers.append(watch_forward(self.objects[req["watch"][0]], req["watch"][1], watched))
        if req.get("resets"):
            removers += watch_resets(self.objects[req["resets"][0]], req["resets"][1], resets)
        captured = []
        if req.get("capture"):
            removers += capture_attention(captured)
        modes = [ShortcutGuard(self.hits, self.trusted, self.lab_dir)] if req.get("guard") else []
        if req.get("device_guard"):
            modes.append(DeviceGuard())
        backward = req.get("backward")
        try:
            for mode in modes:
                mode.__enter__()
            try:
                with torch.no_grad() if req.get("no_grad") else torch.enable_grad():
                    out = fn(*args, **kwargs)
                    if req.get("store"):
                        if isinstance(out, nn.Module):
                            out = out.to(self.device)
                            if req.get("eval"):
                                out.eval()
                        return self.stored(out)
                    grads = self.backward(out, args, owner, backward, tensors) if backward else None
            finally:
                for mode in reversed(modes):
                    mode.__exit__(None, None, None)
        finally:
            for remove in removers:
                remove() if callable(remove) else remove.remove()
        answer = {"out": out}
        if grads is not None:
            answer["grads"] = grads
        if req.get("watch"):
            answer["watched"] = watched
        if req.get("resets"):
            answer["resets"] = resets
        if req.get("capture"):
            answer["captured"] = captured[:1]
        return answer

    def backward(self, out, args, owner, spec, tensors):
        """Backpropagate grad_out from the output (or the output's element spec["index"]) into inputs and parameters."""
        picked = out[spec["index"]] if spec.get("index") is not None and isinstance(out, (tuple, list)) else out
        if not (isinstance(picked, torch.Tensor) and picked.requires_grad):
            return {"connected": False}
        module = owner if isinstance(owner, nn.Module) else next((a for a in args if isinstance(a, nn.Module)), None)
        params = dict(module.named_parameters()) if module is not None else {}
        for p in params.values():
            p.grad = None
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad and a.is_leaf]
        for a in inputs:
            a.grad = None
        picked.backward(tensors[spec["grad_out"]].to(picked.device))
        return {"connected": True, "inputs": [a.grad for a in inputs],
                "params": {name: p.grad for name, p in params.items()}}

    def op_load(self, req, tensors):
        module = self.objects[req["handle"]]
        own = dict(module.named_parameters(remove_duplicate=False))
        own.update(dict(module.named_buffers(remove_duplicate=False)))
        with torch.no_grad():
            for name, value in tensors.items():
                own[name].copy_(value)
        return None

    def op_state(self, req, tensors):
        module = self.objects[req["handle"]]
        return {name: p for name, p in module.named_parameters(remove_duplicate=False)}

    def op_to(self, req, tensors):
        self.objects[req["handle"]].to(req["device"])
        return None

    def op_audit(self, req, tensors):
        return {"changed": self.snapshot.changed()[:20], "hits": self.hits[:20]}


def describe(module: nn.Module) -> dict:
    """What a judge may know of a module: parameters (names, shapes, dtypes, tying), sub-modules and their kinds."""
    params, owners = [], {}
    for name, p in module.named_parameters(remove_duplicate=False):
        params.append([name, list(p.shape), str(p.dtype).removeprefix("torch."), bool(p.requires_grad)])
        owners.setdefault(id(p), []).append(name)
    modules = []
    for name, m in module.named_modules(remove_duplicate=False):
        kinds = [k for k, cls in KINDS.items() if isinstance(m, cls)]
        if isinstance(m, FORBIDDEN_MODULES):
            kinds.append("forbidden")
        modules.append([name, type(m).__name__, type(m).__module__, kinds])
    attrs = {}
    for key in ("n_heads", "n_kv_heads", "d_head", "max_seq_len", "in_features", "out_features", "eps"):
        value = getattr(module, key, None)
        if type(value) in (int, float):
            attrs[key] = value
    return {"params": params, "ties": [names for names in owners.values() if len(names) > 1], "modules": modules,
            "attrs": attrs, "type": type(module).__name__, "module": type(module).__module__}


def watch_forward(module: nn.Module, name: str, watched: list):
    """Record [input shape, grad enabled] for each forward of module.get_submodule(name), through its instance's
    own `forward`: `m(x)` and `m.forward(x)` both pass there. Returns the undo."""
    try:
        sub = module.get_submodule(name)
    except AttributeError:
        return lambda: None
    own, original = "forward" in vars(sub), sub.forward

    def forward(*args, **kwargs):
        if len(watched) < MAX_WATCH:
            first = args[0] if args else next(iter(kwargs.values()), None)
            watched.append([list(first.shape) if isinstance(first, torch.Tensor) else None, torch.is_grad_enabled()])
        return original(*args, **kwargs)
    sub.forward = forward
    return lambda: setattr(sub, "forward", original) if own else vars(sub).pop("forward", None)


def watch_resets(module: nn.Module, name: str, resets: list) -> list:
    """For each backward that reaches parameter `name`: True when its .grad afterwards holds more than this
    backward's gradient (the previous step's was never cleared). Returns the hooks' undos."""
    param = dict(module.named_parameters()).get(name)
    if param is None:
        return []
    incoming = []

    def arrive(grad):
        incoming[:] = [grad.detach().clone()]

    def accumulated(p):
        if incoming and len(resets) < MAX_WATCH:
            resets.append(not torch.allclose(p.grad, incoming[0], rtol=1e-4, atol=1e-7))
    return [param.register_hook(arrive), param.register_post_accumulate_grad_hook(accumulated)]


def capture_attention(captured: list) -> list:
    """Spy on the lab 1 attention the lab modules call: the first call's weights land in `captured`."""
    modules = [m for name, m in sys.modules.items() if name in ("lab1_attention", "lab2_multihead")]
    original = getattr(sys.modules.get("lab1_attention"), "scaled_dot_product_attention", None)
    if original is None:
        return []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out, tuple) and len(out) == 2 and not captured:
            captured.append(out[1])
        return out
    restore = []
    for m in modules:
        if getattr(m, "scaled_dot_product_attention", None) is original:
            m.scaled_dot_product_attention = spy
            restore.append(lambda m=m: setattr(m, "scaled_dot_product_attention", original))
    return restore


def serve(rfd: int, wfd: int, lab_dir: str, device: str, trusted=()):
    """Run the worker loop on a private copy of the lab files; the grader's own folders are not on sys.path.
    `trusted`: the modules in lab_dir that are the pack's stand-ins for earlier labs (imported first)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("grader", "grading", "checkers", "tests")]:
        del sys.modules[name]  # the command line's own module, when this process was forked from it
    sys.modules["__main__"] = types.ModuleType("__main__")
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    sys.path[:] = [lab_dir] + [p for p in sys.path if p and any(os.path.realpath(p).startswith(k) for k in keep)]
    sys.dont_write_bytecode = True
    os.chdir(lab_dir)
    torch.set_num_threads(1)  # tiny tensors: threads only cost here (and fork + OpenMP pools do not mix)
    Server(rfd, wfd, lab_dir, device, [str(t) for t in trusted if type(t) is str]).loop()
