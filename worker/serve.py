"""The worker's loop: read a request, run the student's code it names, answer with plain data.

Requests come from the judge (trusted) as protocol/messages.py messages; each is handled by `handle_<type>` below,
and an unknown one is refused by the codec. Objects the student's code builds stay here, under handle ids, and the
judge refers to them by id. An exception in student code becomes data (ErrorInfo): its type name, message and
the frames from the lab files. A call's grader options (Options) never mix with the student's arguments.
"""
import base64
import dataclasses
import importlib
import marshal
import os
import sys
import traceback
import types

import torch
import torch._dynamo  # noqa: F401  (AdamW and dispatch modes import it lazily, rebinding torch functions)
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

from pack.labs import ATTRS, BY_MODULE
from protocol import messages as m
from protocol.codec import ProtocolError, read_frame, write_frame
from protocol.values import Packer, load_tensors, save_tensors, seed
from worker.guards import FORBIDDEN_MODULES, ForbiddenShortcut, MetaShadow, MetaValueError, ShortcutGuard, Snapshot, code_objects

KINDS = {"Linear": nn.Linear, "Embedding": nn.Embedding, "LayerNorm": nn.LayerNorm, "ModuleList": nn.ModuleList,
         "Dropout": nn.Dropout}
MAX_WATCH = 2000


class Missing(Exception):
    """The contract names something the lab module does not define."""


def install_standin(name: str, code: str) -> types.ModuleType:
    """The stand-in module `name`, made from its compiled code (marshal, base64: protocol.messages.StandIn) and
    registered in sys.modules, as an import would: no file, no loader, no spec, so `inspect.getsource`, linecache and
    tracebacks find no line of it, and `__file__` is not set."""
    compiled = marshal.loads(base64.b64decode(code))
    if not isinstance(compiled, types.CodeType):
        raise TypeError(f"the stand-in {name} is not code")
    module = types.ModuleType(name)
    module.__package__ = ""
    sys.modules[name] = module
    try:
        exec(compiled, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _pairs(standins) -> list:
    """(module, code) of each stand-in: m.StandIn messages, or the dicts the zygote's spec holds."""
    pairs = []
    for s in standins or ():
        name, code = (s.get("module"), s.get("code")) if isinstance(s, dict) else (s.module, s.code)
        if type(name) is str and type(code) is str:
            pairs.append((name, code))
    return pairs


class Server:
    def __init__(self, rfd: int, wfd: int, lab_dir: str, device: str, standins=()):
        self.rfd, self.wfd, self.lab_dir, self.device = rfd, wfd, lab_dir, torch.device(device)
        self.objects, self.hits = {}, []
        self.shadows = WeakIdKeyDictionary()  # meta tensor -> its CPU values (worker.guards.MetaShadow)
        self.snapshot = Snapshot()
        # the pack's stand-ins for earlier labs, installed before any student code: their frames are the grader's
        self.kept_codes, self.standin_files = [], set()
        for name, code in _pairs(standins):
            module = install_standin(name, code)
            self.kept_codes += code_objects(module)  # held here, so no id of theirs is ever reused
            self.standin_files |= {c.co_filename for c in self.kept_codes}
        self.trusted = {id(c) for c in self.kept_codes}

    # ---- the loop ----
    def loop(self):
        while True:
            try:
                request, blob = read_frame(self.rfd, m.REQUESTS)
                tensors = load_tensors(blob)
            except (ProtocolError, OSError):
                return
            packer = Packer(keep=self.keep)
            try:
                answer = getattr(self, "handle_" + request.TYPE)(request, tensors, packer)
            except BaseException as exc:  # noqa: B036: the student's code raised it; it becomes data
                answer = m.Answer(ok=False, error=self.describe_error(exc))
            answer = dataclasses.replace(answer, hits=self.hits[-5:])
            try:
                write_frame(self.wfd, answer, save_tensors(packer.tensors))
            except (OSError, ValueError, RuntimeError, ProtocolError):
                return

    def keep(self, obj) -> str:
        if not isinstance(obj, nn.Module):
            return None
        key = f"h{len(self.objects)}"
        self.objects[key] = obj
        return key

    def describe_error(self, exc: BaseException) -> m.ErrorInfo:
        # the student's own frames only: a stand-in's frames (code named after no file, `<stand-in lab4_gpt>`) are
        # the pack's, and neither they nor any line of theirs is reported
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(self.lab_dir)
                  and f.filename not in self.standin_files]
        if isinstance(exc, SyntaxError) and (exc.filename or "").startswith(self.lab_dir):
            frames.append(traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>", line=(exc.text or "")))
        try:
            message = str(exc)[:2000]
        except Exception:
            message = "?"
        lines = [f'  File "{os.path.basename(f.filename)}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}'
                 for f in frames[-8:]]
        return m.ErrorInfo(
            type=type(exc).__name__, message=message,
            frames=[m.Frame(os.path.basename(f.filename), f.lineno or 0, f.name, (f.line or "").strip()[:200])
                    for f in frames[-8:]],
            traceback="\n".join(["Traceback (most recent call last), your files only:"] + lines
                                + [f"{type(exc).__name__}: {message}"])[-4000:],
            memory=isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in message,
            shortcut=isinstance(exc, ForbiddenShortcut), undecided=isinstance(exc, MetaValueError))

    # ---- arguments ----
    def arg(self, value, tensors: dict):
        if type(value) is list:
            return [self.arg(v, tensors) for v in value]
        if type(value) is not dict:
            return value
        if "$tuple" in value:
            return tuple(self.arg(v, tensors) for v in value["$tuple"])
        if "$t" in value:
            host = tensors[value["$t"]]
            t = host.to(value.get("to") or self.device)
            if t.device.type == "meta":
                self.shadows[t] = host
            return t.requires_grad_() if value.get("grad") else t
        if "$h" in value:
            return self.objects[value["$h"]]
        return {k: self.arg(v, tensors) for k, v in value.items()}

    def target(self, target: m.Target):
        """A lab module's attribute, or a held object's ("blocks.0.mlp.forward" under a held module)."""
        obj = self.objects[target.owner] if target.kind == "handle" else importlib.import_module(target.owner)
        path, _, name = target.name.rpartition(".")
        if path:
            obj = obj.get_submodule(path)
        if not hasattr(obj, name):
            raise Missing(f"{target.owner if target.kind == 'module' else type(obj).__name__}.{name}")
        return getattr(obj, name)

    def stored(self, obj) -> m.Answer:
        if not isinstance(obj, nn.Module):
            key = f"h{len(self.objects)}"
            self.objects[key] = obj
            return m.Answer(ok=True, stored=m.Stored(key, m.ModuleInfo(type(obj).__name__, type(obj).__module__)))
        return m.Answer(ok=True, stored=m.Stored(self.keep(obj), describe(obj)))

    # ---- requests: handle_<message type> ----
    def handle_import(self, req: m.Import, tensors, packer) -> m.Answer:
        importlib.import_module(req.module)
        return m.Answer(ok=True)

    def handle_get(self, req: m.Get, tensors, packer) -> m.Answer:
        value = self.target(req.target)
        return self.stored(value) if isinstance(value, nn.Module) else m.Answer(ok=True, value=packer(value))

    def handle_call(self, req: m.Call, tensors, packer) -> m.Answer:
        opts = req.options
        fn = self.target(req.target)
        args = self.arg(list(req.args) if type(req.args) in (list, tuple) else [], tensors)
        kwargs = self.arg(req.kwargs if type(req.kwargs) is dict else {}, tensors)
        if opts.seed is not None:
            seed(opts.seed, self.device.type == "cuda")
        owner = self.objects.get(req.target.owner) if req.target.kind == "handle" else None
        watched, removers, resets, captured = [], [], [], []
        if opts.swap:
            removers.append(swap_forward(self.objects[opts.swap.handle], self.arg(opts.swap.states, tensors)))
        if opts.watch:
            removers.append(watch_forward(self.objects[opts.watch.handle], opts.watch.name, watched))
        if opts.resets:
            removers += watch_resets(self.objects[opts.resets.handle], opts.resets.name, resets)
        if opts.capture:
            removers += capture(opts.capture.module, opts.capture.function, captured)
        modes = [ShortcutGuard(self.hits, self.trusted, self.lab_dir)] if opts.guard else []
        if opts.device_guard:
            modes.append(MetaShadow(self.shadows))
        try:
            for mode in modes:
                mode.__enter__()
            try:
                with torch.no_grad() if opts.no_grad else torch.enable_grad():
                    out = fn(*args, **kwargs)
                    if opts.store:
                        if isinstance(out, nn.Module):
                            out = out.to(self.device).eval()
                        return self.stored(out)
                    grads = self.backward(out, args, owner, opts.backward, tensors, packer) if opts.backward else None
            finally:
                for mode in reversed(modes):
                    mode.__exit__(None, None, None)
        finally:
            for remove in reversed(removers):  # last installed, first undone: wrappers of one forward nest
                remove() if callable(remove) else remove.remove()
        return m.Answer(ok=True, result=m.Result(
            out=packer(out), grads=grads, watched=packer(watched) if opts.watch else None,
            resets=resets if opts.resets else None, captured=packer(captured[:1]) if opts.capture else None))

    def backward(self, out, args, owner, spec: m.Backward, tensors, packer) -> m.Grads:
        """Backpropagate grad_out from the output (or the output's element spec.index) into inputs and parameters."""
        picked = out[spec.index] if spec.index is not None and isinstance(out, (tuple, list)) else out
        if not (isinstance(picked, torch.Tensor) and picked.requires_grad):
            return m.Grads(connected=False)
        module = owner if isinstance(owner, nn.Module) else next((a for a in args if isinstance(a, nn.Module)), None)
        params = dict(module.named_parameters(remove_duplicate=False)) if module is not None else {}
        for p in params.values():
            p.grad = None
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad and a.is_leaf]
        for a in inputs:
            a.grad = None
        picked.backward(tensors[spec.grad_out["$t"]].to(picked.device))
        return m.Grads(connected=True, inputs=packer([a.grad for a in inputs]),
                       params=packer({name: p.grad for name, p in params.items()}))

    def handle_load(self, req: m.Load, tensors, packer) -> m.Answer:
        load_values(self.objects[req.handle], tensors)
        return m.Answer(ok=True)

    def handle_state(self, req: m.State, tensors, packer) -> m.Answer:
        module = self.objects[req.handle]
        return m.Answer(ok=True, value=packer({name: p for name, p in module.named_parameters(remove_duplicate=False)}))

    def handle_to(self, req: m.To, tensors, packer) -> m.Answer:
        module = self.objects[req.handle]
        own = lambda: list(module.named_parameters(remove_duplicate=False)) + list(  # noqa: E731
            module.named_buffers(remove_duplicate=False))
        with torch.no_grad():
            values = {name: t.detach().to("cpu", copy=True) for name, t in own() if t.device.type != "meta"}
        module.to(req.device)
        if torch.device(req.device).type == "meta":  # meta keeps no values: each tensor's CPU values go beside it
            for name, t in own():
                if name in values and t.device.type == "meta":
                    self.shadows[t] = values[name]
        return m.Answer(ok=True)

    def handle_audit(self, req: m.Audit, tensors, packer) -> m.Answer:
        return m.Answer(ok=True, value={"changed": self.snapshot.changed()[:20], "hits": self.hits[:20]})


def describe(module: nn.Module) -> m.ModuleInfo:
    """What a judge may know of a module: parameters (names, shapes, dtypes, tying), sub-modules and their kinds,
    and the numeric attributes the labs' contracts name (pack/labs.py)."""
    params, owners = [], {}
    for name, p in module.named_parameters(remove_duplicate=False):
        params.append(m.Param(name, list(p.shape), str(p.dtype).removeprefix("torch."), bool(p.requires_grad)))
        owners.setdefault(id(p), []).append(name)
    modules = []
    for name, sub in module.named_modules(remove_duplicate=False):
        kinds = [k for k, cls in KINDS.items() if isinstance(sub, cls)]
        if isinstance(sub, FORBIDDEN_MODULES):
            kinds.append("forbidden")
        modules.append(m.Submodule(name, type(sub).__name__, type(sub).__module__, kinds))
    attrs = {}
    for key in ATTRS:
        value = getattr(module, key, None)
        if type(value) in (int, float):
            attrs[key] = value
    return m.ModuleInfo(type(module).__name__, type(module).__module__, params,
                        [names for names in owners.values() if len(names) > 1], modules, attrs)


def load_values(module: nn.Module, values: dict):
    """Copy {name: tensor} into module's parameters and buffers, each tensor once: a parameter reachable under two
    names (an `nn.Sequential` of the module's own layers, tied weights) takes the value of its first name in the
    module's own order (named_parameters' order) that `values` holds, whatever order `values` came in (the blob's
    order is not fixed), so a load is the same on every run. A name the module does not have is a KeyError."""
    own = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    known = {name for name, _ in own}
    unknown = sorted(name for name in values if name not in known)
    if unknown:
        raise KeyError(f"the grader's weights name `{unknown[0]}`, which the module no longer has: keep the "
                       "parameters and buffers __init__ made (do not add, remove or rename them later)")
    done = set()
    with torch.no_grad():
        for name, tensor in own:
            if name in values and id(tensor) not in done:
                done.add(id(tensor))
                if tuple(tensor.shape) != tuple(values[name].shape):
                    raise RuntimeError(f"the grader could not load its weights into `{name}`: it is "
                                       f"{tuple(tensor.shape)} now, {tuple(values[name].shape)} when the module was "
                                       "built (do not replace parameters after __init__)")
                tensor.copy_(values[name])


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


def swap_forward(module: nn.Module, states) -> callable:
    """Before each outermost forward of `module` (through its instance's own `forward`: `m(x)` and `m.forward(x)`
    both pass there; a forward that calls itself counts once), copy the next of `states` ({parameter name: tensor})
    into its parameters; calls past the last state keep it. Returns the undo, which puts the module's own values
    and forward back."""
    states = [s for s in states if type(s) is dict] if type(states) is list else []
    params = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        saved = {name: p.detach().clone() for name, p in params.items()}
    own, original = "forward" in vars(module), module.forward
    calls, depth = [0], [0]

    def forward(*args, **kwargs):
        if depth[0] == 0 and states:
            state = states[min(calls[0], len(states) - 1)]
            load_values(module, {name: value for name, value in state.items()
                                 if name in params and isinstance(value, torch.Tensor)})
            calls[0] += 1
        depth[0] += 1
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
    module.forward = forward

    def undo():
        setattr(module, "forward", original) if own else vars(module).pop("forward", None)
        load_values(module, saved)
    return undo


def watch_resets(module: nn.Module, name: str, resets: list) -> list:
    """For each backward that reaches parameter `name`: True when its .grad afterwards holds more than this
    backward's gradient (the previous step's was never cleared). Returns the hooks' undos."""
    param = dict(module.named_parameters(remove_duplicate=False)).get(name)
    if param is None:
        return []
    incoming = []

    def arrive(grad):
        incoming[:] = [grad.detach().clone()]

    def accumulated(p):
        if incoming and len(resets) < MAX_WATCH:
            resets.append(not torch.allclose(p.grad, incoming[0], rtol=1e-4, atol=1e-7))
    return [param.register_hook(arrive), param.register_post_accumulate_grad_hook(accumulated)]


def capture(module: str, function: str, captured: list) -> list:
    """Spy on `module.function` wherever the lab modules bound it: the first call's second result (attention
    weights, for lab 1's function) lands in `captured`. Returns the undos."""
    original = getattr(sys.modules.get(module), function, None)
    if original is None:
        return []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out, tuple) and len(out) == 2 and not captured:
            captured.append(out[1])
        return out
    restore = []
    for lab in [sys.modules[name] for name in BY_MODULE if name in sys.modules]:
        if getattr(lab, function, None) is original:
            setattr(lab, function, spy)
            restore.append(lambda lab=lab: setattr(lab, function, original))
    return restore


def serve(rfd: int, wfd: int, lab_dir: str, device: str, standins=()):
    """Run the worker loop on a private copy of the lab files; the grader's own folders are not on sys.path.
    `standins`: the pack's compiled stand-ins for earlier labs (protocol.messages.StandIn, or the zygote's dicts of
    them), installed as modules before any student code runs; the folder holds the submission's files only."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("grader", "parent", "judge", "checkers", "tests")]:
        del sys.modules[name]  # the command line's own module, when this process was forked from it
    sys.modules["__main__"] = types.ModuleType("__main__")
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    sys.path[:] = [lab_dir] + [p for p in sys.path if p and any(os.path.realpath(p).startswith(k) for k in keep)]
    sys.dont_write_bytecode = True
    os.chdir(lab_dir)
    torch.set_num_threads(1)  # tiny tensors: threads only cost here (and fork + OpenMP pools do not mix)
    Server(rfd, wfd, lab_dir, device, standins).loop()


if __name__ == "__main__":  # a fresh interpreter (isolation "spawn", plain pytest): requests fd, answers fd, spec fd
    spec_fd = int(sys.argv[3])  # an anonymous file holding the WorkerSpec as one frame
    spec, _ = read_frame(spec_fd, (m.WorkerSpec,))
    os.close(spec_fd)
    serve(int(sys.argv[1]), int(sys.argv[2]), spec.lab_dir, spec.device, spec.standins)
