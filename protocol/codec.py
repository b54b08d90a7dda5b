"""One encoder and one decoder for every message of protocol/messages.py, in both directions; standard library only.

A message is a frozen dataclass registered under a type name. On the wire it is a JSON object `{"$m": name,
field: value, ...}`: nested messages are objects of their own, tuples are lists, a `Fault` is its value, and a
`Value` field holds plain JSON (the tagged forms of protocol/values.py). `decode` checks everything against the
declared fields, whatever the bytes: the JSON itself (exact built-in types, bounded in depth and size), the type name
(one of those the caller expects), every field's type, no unknown field. Anything else is a ProtocolError, raised
here and nowhere else.

A frame on a pipe is an 8-byte big-endian length, a 4-byte header length, the header (one message) and a blob: the
frame's tensors as safetensors bytes, whose own header is checked here too (bounded, dtypes the protocol carries,
offsets inside the blob), so nothing but plain tensors can ever be loaded from it.
"""
import dataclasses
import enum
import json
import os
import re
import struct
import tempfile
import typing

MAX_FRAME = 64 << 20  # bytes in one frame
MAX_HEADER = 4 << 20  # bytes of JSON in one frame (a judge record, a worker spec: the same bound)
MAX_DEPTH = 32  # nesting of values
MAX_ITEMS = 200_000  # list items and dict entries in one header
DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
                      "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}

TYPES = {}  # type name -> message class
TAG = "$m"  # the key holding a message's type name (no field of a message starts with "$")


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed message (or nothing at all)."""


class Value:
    """The annotation of a field that holds plain JSON (checked for exact built-in types and bounds only)."""


def message(name: str):
    """Register a frozen dataclass as the message `name`."""
    def register(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.TYPE = name
        if name in TYPES:
            raise TypeError(f"message type {name!r} declared twice")
        TYPES[name] = cls
        return cls
    return register


# ---- encoding ----------------------------------------------------------------------------------------
_SCALARS = frozenset((str, int, float, bool, type(None)))
_FIELD_NAMES = {}  # dataclass -> its fields' names, worked out once per class


def to_plain(value):
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        out = {TAG: value.TYPE}
        for name in names:
            out[name] = to_plain(getattr(value, name))
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def encode(msg) -> bytes:
    data = json.dumps(to_plain(msg), allow_nan=True).encode()
    if len(data) > MAX_HEADER:
        raise ProtocolError(f"a {msg.TYPE} message of {len(data)} bytes is over the bound of {MAX_HEADER}")
    return data


# ---- decoding ----------------------------------------------------------------------------------------
def check_plain(value, depth: int = 0, count: list = None):
    """Exact JSON built-ins only, bounded in depth and size."""
    count = count if count is not None else [0]
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ProtocolError("a message is nested too deeply or holds too many values")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ProtocolError("a key is not a string")
            _check_item(item, depth + 1, count)
    elif kind is list:
        for item in value:
            _check_item(item, depth + 1, count)
    elif kind not in _SCALARS:
        raise ProtocolError(f"a value of type {kind.__name__}")


def _check_item(item, depth: int, count: list):
    """check_plain(item, depth, count), with a leaf checked in place (most values are leaves)."""
    if type(item) in _SCALARS and depth <= MAX_DEPTH:
        count[0] += 1
        if count[0] > MAX_ITEMS:
            raise ProtocolError("a message is nested too deeply or holds too many values")
    else:
        check_plain(item, depth, count)


def _hints(cls) -> dict:
    cached = cls.__dict__.get("_field_types")
    if cached is None:
        cached = typing.get_type_hints(cls)
        type.__setattr__(cls, "_field_types", cached)
    return cached


_DECODERS = {}  # a field's declared type -> its decoder, made once (see _decoder)
_CLASSES = {}  # message class -> (field names, [(name, decoder, where, required)])


def _convert(value, kind, where: str):
    """`value` (plain JSON) as the declared type `kind`; ProtocolError naming `where` for anything else."""
    return _decoder(kind)(value, where)


def _decoder(kind):
    """decode(value, where) for the declared type `kind`: the type is looked at once, here, not at every value."""
    try:
        return _DECODERS[kind]
    except KeyError:
        found = _DECODERS[kind] = _make_decoder(kind)
        return found


def _plain(value, where):
    return value


def _make_decoder(kind):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Value or kind is typing.Any:
        return _plain
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        nullable = type(None) in args
        options = [_decoder(a) for a in args if a is not type(None)]

        def union(value, where):
            if value is None and nullable:
                return None
            errors = []
            for option in options:
                try:
                    return option(value, where)
                except ProtocolError as exc:
                    errors.append(str(exc))
            raise ProtocolError(errors[0] if errors else f"{where}: unexpected null")
        return union
    if origin in (list, tuple):
        item = _decoder(args[0] if args else Value)
        as_tuple = origin is tuple

        def sequence(value, where):
            if type(value) is not list:
                raise ProtocolError(f"{where}: expected a list")
            items = [item(v, where) for v in value]
            return tuple(items) if as_tuple else items
        return sequence
    if origin is dict:
        entry = _decoder(args[1])

        def mapping(value, where):
            if type(value) is not dict:
                raise ProtocolError(f"{where}: expected an object")
            return {k: entry(v, where) for k, v in value.items()}
        return mapping
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        def member(value, where):
            try:
                return kind(value)
            except ValueError:
                raise ProtocolError(f"{where}: {str(value)[:40]!r} is not a {kind.__name__}") from None
        return member
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        expect = (kind,)
        return lambda value, where: from_plain(value, expect, where)  # made on first use: a class may nest itself
    if kind is float:
        def number(value, where):
            if type(value) not in (int, float):
                raise ProtocolError(f"{where}: expected a number")
            try:
                return float(value)
            except OverflowError:  # an integer past a float's range (10**400)
                raise ProtocolError(f"{where}: a number out of range") from None
        return number
    if kind in (str, int, bool):
        def exact(value, where):
            if type(value) is not kind:
                raise ProtocolError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
            return value
        return exact
    if kind is type(None):
        def null(value, where):
            if value is not None:
                raise ProtocolError(f"{where}: expected null")
            return None
        return null

    def refuse(value, where):
        raise ProtocolError(f"{where}: no decoder for {kind!r}")
    return refuse


def _fields(cls) -> tuple:
    """(field names, [(name, decoder, where, required)]) of a message class, worked out once."""
    found = _CLASSES.get(cls)
    if found is None:
        hints = _hints(cls)
        fields = [(f.name, _decoder(hints[f.name]), f"{cls.TYPE}.{f.name}",
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                  for f in dataclasses.fields(cls)]
        found = _CLASSES[cls] = (frozenset(f[0] for f in fields), fields)
    return found


def from_plain(obj, expect=None, where: str = "message"):
    """The message `obj` (plain JSON) stands for; `expect`: the classes the caller accepts (default: any)."""
    if type(obj) is not dict:
        raise ProtocolError(f"{where}: expected an object")
    tag = obj.get(TAG)
    cls = TYPES.get(tag) if type(tag) is str else None
    if cls is None or (expect is not None and cls not in expect):
        wanted = ", ".join(c.TYPE for c in expect) if expect else "a known type"
        raise ProtocolError(f"{where}: got type {str(tag)[:40]!r}, expected {wanted}")
    names, fields = _fields(cls)
    if len(obj) > len(names) + 1 or not names.issuperset(k for k in obj if k != TAG):
        unknown = [k for k in obj if k != TAG and k not in names]
        raise ProtocolError(f"{cls.TYPE}: unknown field {unknown[0][:40]!r}")
    values = {}
    for name, decode_field, at, required in fields:
        if name in obj:
            values[name] = decode_field(obj[name], at)
        elif required:
            raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
    return cls(**values)


def decode(data: bytes, expect=None):
    """A message from its JSON bytes; ProtocolError for anything else."""
    if len(data) > MAX_HEADER:
        raise ProtocolError(f"a message of {len(data)} bytes is over the bound of {MAX_HEADER}")
    try:
        obj = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except Exception as exc:  # includes RecursionError from deep nesting and UnicodeDecodeError
        raise ProtocolError(f"unreadable message ({type(exc).__name__})") from None
    check_plain(obj)
    return from_plain(obj, expect)


# ---- safetensors blobs, checked without loading them -----------------------------------------------
def check_blob(blob: bytes) -> dict:
    """{name: (dtype, shape)} of a safetensors blob; ProtocolError unless it is well formed and inside its bounds."""
    if not blob:
        return {}
    if len(blob) < 8:
        raise ProtocolError("the tensors are cut short")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(len(blob) - 8, MAX_HEADER):
        raise ProtocolError("the tensors' header is out of bounds")
    try:
        header = json.loads(blob[8:8 + size].decode("utf-8"))
    except Exception as exc:
        raise ProtocolError(f"unreadable tensors ({type(exc).__name__})") from None
    check_plain(header)
    if type(header) is not dict:
        raise ProtocolError("unreadable tensors (not an object)")
    found, data = {}, len(blob) - 8 - size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if type(info) is not dict or type(info.get("dtype")) is not str or info["dtype"] not in SAFETENSORS_DTYPES:
            raise ProtocolError(f"tensor {name[:40]!r} has no dtype the protocol carries")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if type(shape) is not list or not all(type(s) is int and s >= 0 for s in shape) or type(offsets) is not list \
                or len(offsets) != 2 or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data:
            raise ProtocolError(f"tensor {name[:40]!r} is described out of bounds")
        found[name] = (SAFETENSORS_DTYPES[info["dtype"]], shape)
    return found


_SURROGATE = re.compile("[\ud800-\udfff]")


def files_blob(files: dict) -> bytes:
    """{name: bytes} as a safetensors blob of uint8 vectors (standard library only): a submission's lab files travel
    as bytes beside a message, never inside its JSON. A name is UTF-8 text, and "__metadata__" is safetensors' own
    key, never a file's."""
    header, offset = {}, 0
    for name, data in files.items():
        if name == "__metadata__" or _SURROGATE.search(name):  # one would be lost, the other changed, on the way back
            raise ProtocolError(f"no file can travel as {name[:40]!r}")
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(files.values())


def blob_files(blob: bytes) -> dict:
    """The {name: bytes} of files_blob; ProtocolError for anything else."""
    found = check_blob(blob)
    if not blob:
        return {}
    (size,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + size].decode("utf-8")), memoryview(blob)[8 + size:]
    files = {}
    for name, (dtype, shape) in found.items():
        if dtype != "uint8" or len(shape) != 1:
            raise ProtocolError(f"{name[:40]!r} is not a file's bytes")
        start, end = header[name]["data_offsets"]
        files[name] = bytes(data[start:end])
    return files


# ---- frames on a pipe --------------------------------------------------------------------------------
def write_frame(fd: int, msg, blob: bytes = b""):
    head = encode(msg)
    data = struct.pack(">QI", 4 + len(head) + len(blob), len(head)) + head + blob
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def frame_file(msg, blob: bytes = b"") -> int:
    """A descriptor of an anonymous file (no name in any folder: a memfd, else an unlinked temporary file) holding
    `msg` and `blob` as one frame, at offset 0: how a spec of any size reaches another process, never on a command
    line or in a datagram. The caller passes it on and closes it."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("frame", os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        write_frame(fd, msg, blob)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_exact(fd: int, n: int, reader) -> bytearray:
    buf = bytearray()
    while len(buf) < n:
        chunk = reader(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProtocolError("the peer closed its pipe")
        buf += chunk
    return buf


def read_frame(fd: int, expect=None, reader=os.read) -> tuple:
    """(message, blob) from the next frame on fd; ProtocolError for anything malformed."""
    (size, head_len) = struct.unpack(">QI", _read_exact(fd, 12, reader))
    if not 4 <= size <= MAX_FRAME or head_len > min(size - 4, MAX_HEADER):
        raise ProtocolError(f"frame of {size} bytes with a {head_len}-byte header is out of bounds")
    body = bytes(_read_exact(fd, size - 4, reader))
    blob = body[head_len:]
    check_blob(blob)
    return decode(body[:head_len], expect), blob
