"""The data-only protocol between a judge and a worker: frames of a JSON header plus one safetensors blob.

A frame on the pipe is an 8-byte big-endian length, then a 4-byte header length, the header (UTF-8 JSON) and a
safetensors blob holding the frame's tensors (absent when there are none). Nothing is pickled and nothing that
arrives is an object whose methods run: JSON gives exact built-in values, safetensors gives plain tensors.

Values inside a header are JSON values plus a few tagged forms, so that tuples, tensors and foreign objects
survive the trip:
    {"$tuple": [...]}   {"$dict": {...}}   {"$h": id} (an object the worker keeps)
    {"$t": name, "device": str, "dtype": str, "shape": [...], "requires_grad": bool}  (a tensor; name=None: meta)
    {"$object": type name, "repr": text}  (anything else the student's code returned)

`read_frame` is what the judge runs on a worker's bytes: every size is bounded and every failure of the parse,
whatever the bytes, becomes ProtocolError. This module imports torch and safetensors only.
"""
import json
import os
import struct

import torch

MAX_FRAME = 64 << 20  # bytes in one frame
MAX_HEADER = 4 << 20  # bytes of JSON in one frame
MAX_DEPTH = 32  # nesting of values
MAX_ITEMS = 200_000  # list items and dict entries in one header
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint8, torch.bool)}


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame (or nothing at all)."""


# ---- bytes on a pipe ------------------------------------------------------------------------------
def write_frame(fd: int, header: dict, tensors: dict = None):
    from safetensors.torch import save
    blob = save(tensors) if tensors else b""
    head = json.dumps(header, allow_nan=True).encode()
    data = struct.pack(">QI", 4 + len(head) + len(blob), len(head)) + head + blob
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline_read) -> bytearray:
    buf = bytearray()
    while len(buf) < n:
        chunk = deadline_read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProtocolError("the worker closed its pipe")
        buf += chunk
    return buf


def read_frame(fd: int, reader=os.read) -> tuple:
    """(header dict, {name: tensor}) from the next frame on fd; ProtocolError for anything malformed."""
    (size, head_len) = struct.unpack(">QI", _read_exact(fd, 12, reader))
    if not 4 <= size <= MAX_FRAME or head_len > min(size - 4, MAX_HEADER):
        raise ProtocolError(f"frame of {size} bytes with a {head_len}-byte header is out of bounds")
    body = _read_exact(fd, size - 4, reader)
    return decode(bytes(body[:head_len]), bytes(body[head_len:]))


def decode(head: bytes, blob: bytes) -> tuple:
    try:
        header = json.loads(head.decode("utf-8"))
    except Exception as exc:  # includes RecursionError from deep nesting and UnicodeDecodeError
        raise ProtocolError(f"unreadable header ({type(exc).__name__})") from None
    if type(header) is not dict:
        raise ProtocolError("the header is not an object")
    _check_plain(header, 0, [0])
    tensors = {}
    if blob:
        from safetensors.torch import load
        try:
            tensors = load(blob)
        except Exception as exc:
            raise ProtocolError(f"unreadable tensors ({type(exc).__name__})") from None
    for name, t in tensors.items():
        if t.dtype not in DTYPES.values():
            raise ProtocolError(f"tensor {name!r} has dtype {t.dtype}")
    return header, tensors


def _check_plain(value, depth: int, count: list):
    """Exact JSON built-ins only, bounded in depth and size (json.loads makes nothing else, but say it here)."""
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ProtocolError("the header is nested too deeply or holds too many values")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ProtocolError("a key is not a string")
            _check_plain(item, depth + 1, count)
    elif kind is list:
        for item in value:
            _check_plain(item, depth + 1, count)
    elif kind not in (str, int, float, bool, type(None)):
        raise ProtocolError(f"a value of type {kind.__name__}")


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
