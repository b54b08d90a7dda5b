"""Values inside messages: tensors, tuples and the student's objects as tagged plain JSON plus a safetensors blob.

The only module of protocol/ that needs torch (and safetensors); the judge and the worker use it, the parent never.
Nothing is pickled and nothing that arrives is an object whose methods run: the codec gives exact built-in values,
safetensors gives plain tensors. The tagged forms:
    {"$tuple": [...]}   {"$dict": {...}}   {"$h": id} (an object the worker keeps)
    {"$t": name, "device": str, "dtype": str, "shape": [...], "requires_grad": bool}  (a tensor; name=None: meta)
    {"$object": type name, "repr": text}  (anything else the student's code returned)
"""
import torch

from protocol.codec import DTYPES as DTYPE_NAMES, MAX_DEPTH, ProtocolError

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def seed(n: int, cuda: bool = False):
    """What Options.seed means on either side: torch.manual_seed(n). Without `cuda` (a process that does not grade on
    CUDA), the CPU generator alone, which is all such a process draws from: torch.manual_seed also queues a seed for
    CUDA while CUDA is not initialised, taking a stack trace each time (about 0.5 ms), once per check and per call."""
    if cuda or torch.cuda.is_initialized():
        torch.manual_seed(n)
    else:
        torch.random.default_generator.manual_seed(n)


def save_tensors(tensors: dict) -> bytes:
    """The frame's blob for {name: tensor}."""
    if not tensors:
        return b""
    from safetensors.torch import save
    return save(tensors)


def load_tensors(blob: bytes) -> dict:
    """{name: tensor} from a blob the codec already checked; ProtocolError for anything unreadable."""
    if not blob:
        return {}
    from safetensors.torch import load
    try:
        tensors = load(blob)
    except Exception as exc:
        raise ProtocolError(f"unreadable tensors ({type(exc).__name__})") from None
    for name, t in tensors.items():
        if t.dtype not in DTYPES.values():
            raise ProtocolError(f"tensor {name!r} has dtype {t.dtype}")
    return tensors


# ---- values <-> JSON + tensors ----------------------------------------------------------------------
class Packer:
    """Turns a value into JSON plus a dict of tensors (each tensor stored once, under a fresh name)."""

    def __init__(self, keep=None):
        self.tensors, self.keep = {}, keep  # keep(obj) -> handle id, for objects the worker holds on to

    def tensor(self, t: torch.Tensor) -> dict:
        info = {"$t": None, "device": str(t.device), "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape), "requires_grad": bool(t.requires_grad)}
        if t.device.type != "meta":
            name = f"t{len(self.tensors)}"
            self.tensors[name] = t.detach().to("cpu").contiguous().clone()
            info["$t"] = name
        return info

    def __call__(self, value, depth: int = 0):
        kind = type(value)
        if kind in (str, int, float, bool, type(None)):
            return value
        if depth > MAX_DEPTH - 2:
            return {"$object": kind.__name__, "repr": "(nested too deeply)"}
        if kind is list:
            return [self(v, depth + 1) for v in value]
        if kind is tuple:
            return {"$tuple": [self(v, depth + 1) for v in value]}
        if kind is dict and all(type(k) is str for k in value):
            return {"$dict": {k: self(v, depth + 1) for k, v in value.items()}}
        if isinstance(value, torch.Tensor):
            with torch._C.DisableTorchFunctionSubclass():
                return self.tensor(torch.Tensor._make_subclass(torch.Tensor, value.detach()) if kind is not
                                   torch.Tensor else value)
        handle = self.keep(value) if self.keep else None
        if handle is not None:
            return {"$h": handle}
        try:
            text = repr(value)[:200]
        except Exception:
            text = "?"
        return {"$object": kind.__name__, "repr": text}


class Unpacker:
    """The inverse of Packer; tensors come back as plain CPU tensors, with what the peer said of them attached."""

    def __init__(self, tensors: dict, handle=None):
        self.tensors, self.handle = tensors, handle

    def tensor(self, info: dict) -> torch.Tensor:
        name, dtype = info.get("$t"), DTYPES.get(info.get("dtype"))
        shape = info.get("shape")
        if dtype is None or type(shape) is not list or not all(type(s) is int and s >= 0 for s in shape):
            raise ProtocolError(f"bad tensor description {str(info)[:100]}")
        if name is None:
            t = torch.empty(shape, dtype=dtype, device="meta")
        else:
            t = self.tensors.get(name)
            if type(name) is not str or t is None or t.dtype != dtype or list(t.shape) != shape:
                raise ProtocolError(f"tensor {str(name)[:40]} does not match its description")
        t.remote_device = str(info.get("device", "cpu"))[:40]
        t.remote_requires_grad = info.get("requires_grad") is True
        return t

    def __call__(self, value):
        if type(value) is list:
            return [self(v) for v in value]
        if type(value) is not dict:
            return value
        if "$tuple" in value and type(value["$tuple"]) is list:
            return tuple(self(v) for v in value["$tuple"])
        if "$dict" in value and type(value["$dict"]) is dict:
            return {k: self(v) for k, v in value["$dict"].items()}
        if "$t" in value:
            return self.tensor(value)
        if "$h" in value and self.handle is not None:
            return self.handle(value["$h"])
        if "$object" in value:
            return Foreign(str(value["$object"])[:100], str(value.get("repr", ""))[:200])
        return {k: self(v) for k, v in value.items()}


class Foreign:
    """A value of a type the protocol does not carry: its type name and repr, as text."""

    def __init__(self, type_name: str, text: str):
        self.type_name, self.text = type_name, text

    def __repr__(self):
        return self.text
