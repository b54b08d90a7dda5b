"""Fuzzing what reads untrusted input: random and adversarial inputs never raise out of a function's documented
boundary, in bounded time and memory.

    protocol/codec.py   anything malformed is a ProtocolError, nothing else (no RecursionError, MemoryError,
                        TypeError, UnicodeError, OverflowError, ...); what decodes re-encodes; files round-trip
    parent/verdict.py   clean: any str gives text with no control characters that UTF-8 can encode
    parent/batch.py     cell, row: that, on one line, with no leading formula sign, one CSV row read back
    parent/report.py    the scorecard prints on any console (StringIO, ascii, utf-8, strict) and results.json is
                        strict JSON whose every text UTF-8 can encode
    parent/submission   a notebook's bytes give its lab text or a ValueError; an export's text its lab text or
                        None; a folder of any name and bytes is read without raising; a name prints safely

Each property is a plain `assert_*` function run by a Hypothesis test; test_the_properties_can_fail runs each one
on a known-bad implementation (the code as it was before the fixes, or a plausible mistake) and expects it to fail.
"""
import csv
import io
import json
import math
import os
import re
import struct
import time
import tracemalloc
import typing

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

from pack.labs import LABS
from protocol import codec, messages as m
from protocol.codec import ProtocolError

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
SECONDS = 10.0  # any one call (a loaded machine: the bound is for runaway work, not for speed)


# ---- strategies ----------------------------------------------------------------------------------------
NASTY = ("\x00", "\x07", "\x1b", "\x1b[31m", "\x1b]0;title\x07", "\r", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x7f",
         "\x85", "\x9b", "\u202e", "\u202d", "\u2066", "\u2067", "\u2069", "\u200f", "\u061c", "\u2028", "\u2029",
         "\ud800", "\udfff", "\ud83d\ude00", "\ufeff", "\u200b", "=", "+", "-", "@", "'", '"', ",", ";", "é", "✓",
         "𝔘", "\U0010ffff", "\ufffd", "=HYPERLINK(\"x\")", "@SUM(1)")
# every code point, surrogates included (Hypothesis leaves them out by default)
anychar = st.characters(exclude_categories=[]) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                                               exclude_categories=[])
texts = st.lists(st.sampled_from(NASTY) | st.text(anychar, max_size=8), max_size=12).map("".join)
numbers = st.integers() | st.integers(min_value=10 ** 308, max_value=10 ** 330) | st.floats() | st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), -0.0, 1e308, 5e-324])
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(["$m", "$t", "name", "x", ""]) | texts, inner, max_size=4),
                           max_leaves=16)


def _field(kind, depth):
    """Values a field of type `kind` might hold: well typed mostly, anything plain sometimes."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is codec.Value or kind is typing.Any or depth > 3:
        good = json_values
    elif origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        good = st.one_of(*[_field(a, depth) if a is not type(None) else st.none() for a in args])
    elif origin in (list, tuple):
        good = st.lists(_field(args[0] if args else codec.Value, depth + 1), max_size=3)
    elif origin is dict:
        good = st.dictionaries(texts, _field(args[1], depth + 1), max_size=3)
    elif isinstance(kind, type) and issubclass(kind, m.Fault):
        good = st.sampled_from([f.value for f in m.Fault]) | texts
    elif isinstance(kind, type) and hasattr(kind, "TYPE"):
        good = message_plain(kind, depth + 1)
    else:
        good = {str: texts, int: st.integers(), float: numbers, bool: st.booleans()}.get(kind, json_values)
    return st.one_of(good, good, good, json_values)


def message_plain(cls, depth=0):
    """A plain object shaped like message `cls`: fields dropped, mistyped, unknown ones added, the tag changed."""
    hints = typing.get_type_hints(cls)
    fields = st.fixed_dictionaries({}, optional={name: _field(kind, depth) for name, kind in hints.items()
                                                 if name not in ("TYPE", "_field_types")})
    tag = st.sampled_from([cls.TYPE, cls.TYPE, cls.TYPE, "nope", "", "$m"]) | texts | json_values
    extra = st.dictionaries(st.sampled_from(["$m", "extra", "TYPE", "__class__"]) | texts, json_values, max_size=2)
    return st.tuples(tag, fields, extra, st.booleans()).map(
        lambda t: {**(t[2] if t[3] else {}), codec.TAG: t[0], **t[1]})


CLASSES = sorted(codec.TYPES.values(), key=lambda c: c.TYPE)
messages_plain = st.sampled_from(CLASSES).flatmap(message_plain)
expects = st.none() | st.lists(st.sampled_from(CLASSES), min_size=1, max_size=3, unique=True).map(tuple)

TOKENS = (b"[", b"]", b"{", b"}", b":", b",", b'"$m"', b'"check"', b'"answer"', b'"name"', b'"ok"', b"true", b"null",
          b"1e999", b"-1e999", b"NaN", b"Infinity", b"-0", b"1" * 5000, b'"\\ud800"', b'"\\udfff\\ud800"',
          b'"\\u0000"', b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"\\", b" ", b"\x00")
token_soup = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
deep = st.builds(lambda opening, n, close: opening * n + (opening.translate(bytes.maketrans(b"[{", b"]}")) * n
                                                          if close else b""),
                 st.sampled_from([b"[", b'{"a":', b'{"$m":', b'[{"x":']), st.sampled_from([33, 1000, 100_000]),
                 st.booleans())
json_bytes = json_values.map(lambda v: json.dumps(v).encode()) | messages_plain.map(lambda v: json.dumps(v).encode())
wire = st.one_of(st.binary(max_size=64), token_soup, deep, json_bytes)


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AssertionError(f"not UTF-8: {exc}") from None


def within_contract(call, *args):
    """call(*args), or None for a ProtocolError; anything else it raises, or taking too long, fails."""
    start = time.monotonic()
    try:
        out = call(*args)
    except ProtocolError:
        out = None
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} escaped: {str(exc)[:200]}") from exc
    assert time.monotonic() - start < SECONDS, "too slow"
    return out


# ---- protocol/codec.py ---------------------------------------------------------------------------------
def assert_decodes_or_refuses(decode, data, expect):
    msg = within_contract(decode, data, expect)
    if msg is not None:
        assert expect is None or type(msg) in expect
        again = codec.encode(msg)  # what decodes re-encodes, and re-decodes to the same text
        assert codec.encode(decode(again, expect)) == again


@FUZZ
@given(wire, expects)
@example(b"[" * 100_000, None)
@example(b'{"$m": "check", "name": "x", "outcome": "passed", "seconds": 1' + b"0" * 400 + b"}", None)  # past float
@example(b'{"$m": "check", "name": "x", "outcome": "passed", "seconds": 1e999}', None)
@example(b'{"$m": "rule_broken", "message": "\\ud800"}', None)
@example(b'{"$m": "rule_broken", "message": "a", "message": 1}', None)  # duplicate keys
@example(b'{"$m": "failure", "fault": ["crashed"], "message": "x"}', None)  # unhashable enum value
@example(b'{"$m": "what", "x": NaN}', (m.Answer,))
@example("\udcff".encode("utf-8", "surrogatepass"), None)
def test_decode_any_bytes(data, expect):
    assert_decodes_or_refuses(codec.decode, data, expect)


@FUZZ
@given(messages_plain, expects)
@example({"$m": "check", "name": "x", "outcome": "passed", "seconds": 10 ** 400}, None)
@example({"$m": "options", "backward": {"$m": "backward", "grad_out": 1, "index": True}}, None)
@example({"$m": "failure", "fault": {}, "message": "x"}, (m.Failure,))
def test_from_plain_any_message_shape(obj, expect):
    msg = within_contract(codec.from_plain, obj, expect)
    if msg is not None:
        assert expect is None or type(msg) in expect
        assert codec.encode(codec.decode(codec.encode(msg))) == codec.encode(msg)


def _nested(n):
    v = []
    for _ in range(n):
        v = [v]
    return v


def _cycle():
    v = []
    v.append(v)
    return v


ODD = (lambda: (1, 2), lambda: b"x", lambda: {1: 2}, lambda: {(1,): 2}, lambda: {True: 1}, object, set, _cycle,
       lambda: _nested(100_000), lambda: {"a": _nested(40)}, lambda: [1.5j], lambda: m.Fault.OOM)
odd_values = json_values | st.sampled_from(ODD).map(lambda make: make())  # made on demand: a deep list has no repr


@FUZZ
@given(st.recursive(odd_values, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                    max_leaves=8))
def test_check_plain_any_value(value):
    within_contract(codec.check_plain, value)


DTYPE_NAMES = st.sampled_from(sorted(codec.SAFETENSORS_DTYPES)) | st.sampled_from(["F8", "f32", "", "U8 "]) \
    | json_values
offsets = st.lists(st.integers(-2, 70) | st.integers(min_value=2 ** 62) | json_values, max_size=3)
tensor_infos = st.fixed_dictionaries({}, optional={"dtype": DTYPE_NAMES, "shape": st.lists(st.integers(-1, 9) | json_values,
                                                                                            max_size=3) | json_values,
                                                   "data_offsets": offsets | json_values}) | json_values


@st.composite
def blobs(draw):
    header = draw(st.dictionaries(st.sampled_from(["__metadata__", "t0", "a.py"]) | texts, tensor_infos, max_size=3)
                  | json_values)
    head = draw(st.sampled_from([json.dumps(header).encode(), json.dumps(header).encode()]) | token_soup | deep)
    data = draw(st.binary(max_size=64))
    size = draw(st.sampled_from([len(head), len(head), len(head) + 1, max(len(head) - 1, 0), 2 ** 64 - 1,
                                 codec.MAX_HEADER + 1]) | st.integers(0, 2 ** 64 - 1))
    return struct.pack("<Q", size) + head + data


@FUZZ
@given(blobs() | st.binary(max_size=40))
@example(b"\x0e\x00\x00\x00\x00\x00\x00\x00" + b'{"a":{"dtype":[]}}'[:14])
@example(struct.pack("<Q", 19) + b'{"a":{"dtype":[1]}}')  # an unhashable dtype
@example(struct.pack("<Q", 2 ** 64 - 1) + b"{}")
@example(struct.pack("<Q", 2) + b"{}\xff")
def test_check_blob_any_bytes(blob):
    found = within_contract(codec.check_blob, blob)
    if found is not None:
        assert all(dtype in codec.DTYPES and all(type(s) is int and s >= 0 for s in shape)
                   for dtype, shape in found.values())
    files = within_contract(codec.blob_files, blob)
    if files is not None:
        assert all(type(k) is str and type(v) is bytes for k, v in files.items())
        assert sum(map(len, files.values())) <= len(blob)


def assert_files_round_trip(files_blob, blob_files, files):
    blob = within_contract(files_blob, files)
    if blob is None:  # the name the format keeps for itself, or one UTF-8 cannot carry
        assert "__metadata__" in files or any(re.search("[\ud800-\udfff]", name) for name in files)
        return
    assert within_contract(blob_files, blob) == files


@FUZZ
@given(st.dictionaries(texts | st.sampled_from(["__metadata__", "lab1_attention.py", ""]),
                       st.binary(max_size=40), max_size=5))
@example({"__metadata__": b"x"})
@example({"\ud800": b"", "": b"\x00"})
@example({"\ud83d\ude00": b""})  # two surrogates JSON would join into one character
def test_files_blob_round_trips(files):
    assert_files_round_trip(codec.files_blob, codec.blob_files, files)


def travels(files: dict) -> dict:
    """The files files_blob takes: names UTF-8 can carry, none safetensors keeps for itself."""
    return {k: v for k, v in files.items() if k != "__metadata__" and not re.search("[\ud800-\udfff]", k)}


@FUZZ
@given(st.dictionaries(texts, st.binary(max_size=40), min_size=1, max_size=3), st.data())
def test_blob_files_of_a_damaged_blob(files, data):
    blob = bytearray(codec.files_blob(travels(files) or {"a": b"1"}))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    within_contract(codec.blob_files, bytes(blob[:cut]))


class FakeReader:
    """os.read over a bytes string, in the chunk sizes Hypothesis picks; b"" once it is all read."""

    def __init__(self, data: bytes, chunks):
        self.data, self.chunks, self.at, self.asked = data, list(chunks) or [1 << 20], 0, 0

    def __call__(self, fd, n):
        assert 0 < n <= 1 << 20, n  # never asks for more than a bounded read
        self.asked += n
        step = min(n, self.chunks[self.at % len(self.chunks)] if self.at else n)
        out, self.data = self.data[:step], self.data[step:]
        self.at += 1
        return out


def assert_frame_read(read_frame, data, chunks, expect):
    got = within_contract(read_frame, -1, expect, FakeReader(data, chunks))
    if got is not None:
        msg, blob = got
        assert expect is None or type(msg) in expect
        assert type(blob) is bytes and len(blob) < len(data)


def frame(head: bytes, blob: bytes = b"", size=None, head_len=None) -> bytes:
    size = 4 + len(head) + len(blob) if size is None else size
    return struct.pack(">QI", size, len(head) if head_len is None else head_len) + head + blob


@st.composite
def frames(draw):
    head = draw(wire | json_bytes)
    blob = draw(st.sampled_from([b"", codec.files_blob({"a.py": b"print(1)\n"})]) | blobs())
    size = draw(st.none() | st.sampled_from([0, 3, 4, codec.MAX_FRAME, codec.MAX_FRAME + 1, 2 ** 64 - 1])
                | st.integers(0, 2 ** 64 - 1))
    head_len = draw(st.none() | st.sampled_from([0, 2 ** 32 - 1, codec.MAX_HEADER + 1]) | st.integers(0, 2 ** 32 - 1))
    data = frame(head, blob, size, head_len)
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@FUZZ
@given(frames(), st.lists(st.integers(1, 64), max_size=4), expects)
@example(frame(b"{}", size=2 ** 64 - 1), [], None)  # a huge length: refused before anything is read or allocated
@example(frame(b"{}", size=codec.MAX_FRAME), [], None)  # a frame that claims the bound and then stops
@example(frame(b'{"$m": "end"}', head_len=2 ** 32 - 1), [], None)
@example(frame(b'{"$m": "end"}', struct.pack("<Q", 2) + b"[]"), [1], None)
@example(frame(b'{"$m": "rule_broken", "message": "\\ud800"}'), [3, 1], (m.RuleBroken,))
def test_read_frame_any_bytes(data, chunks, expect):
    assert_frame_read(codec.read_frame, data, chunks, expect)


@FUZZ
@given(texts, st.sampled_from(["passed", "failed", "skipped"]), numbers, st.dictionaries(texts, st.binary(max_size=30),
                                                                                          max_size=3),
       st.lists(st.integers(1, 64), max_size=4))
def test_a_written_frame_reads_back(name, outcome, seconds, files, chunks):
    msg = m.CheckDone(name=name, outcome=outcome, seconds=float(seconds) if not isinstance(seconds, int)
                      or abs(seconds) < 1e300 else 0.0)
    blob = codec.files_blob(travels(files))
    r, w = os.pipe()
    try:
        codec.write_frame(w, msg, blob)
        os.close(w)
        w = None
        data = b"".join(iter(lambda: os.read(r, 1 << 16), b""))
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    got, back = codec.read_frame(-1, (m.CheckDone,), FakeReader(data, chunks))
    assert codec.encode(got) == codec.encode(msg) and back == blob
    assert codec.blob_files(back) == travels(files)


def peak_mib(call, *args) -> float:
    tracemalloc.start()
    try:
        within_contract(call, *args)
        return tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, call, args, mib", [
    ("deep arrays", codec.decode, (b"[" * codec.MAX_HEADER, None), 32),
    ("deep objects", codec.decode, (b'{"a":' * (codec.MAX_HEADER // 5), None), 32),
    ("many values", codec.decode, (b"[" + b"0," * (codec.MAX_HEADER // 2 - 2) + b"0]", None), 160),
    ("a huge frame length", codec.read_frame, (-1, None, FakeReader(frame(b"{}", size=2 ** 64 - 1), [])), 1),
    ("a frame that stops", codec.read_frame, (-1, None, FakeReader(frame(b"{}", size=codec.MAX_FRAME), [])), 1),
    ("a huge tensors header", codec.check_blob, (struct.pack("<Q", 2 ** 63) + b"{}",), 1),
])
def test_adversarial_input_in_bounded_memory(name, call, args, mib):
    assert peak_mib(call, *args) < mib, name


# ---- parent/verdict.py, parent/batch.py -----------------------------------------------------------------
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def controls(text: str, allowed: str = "") -> list:
    """Characters a terminal or a spreadsheet would act on: C0, DEL, C1 (but `allowed`), bidi controls, lone
    surrogates."""
    return [c for c in text if (c not in allowed and (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f)) or c in BIDI
            or 0xD800 <= ord(c) <= 0xDFFF]


def assert_clean(clean, text):
    out = within_contract(clean, text)
    utf8(out)
    assert not controls(out, allowed="\t\n"), ascii(out)
    assert clean(out) == out  # once is enough
    plain = re.sub(r"[^\w .,:;!?()'\"/=+-]", "", text)
    assert clean(plain) == plain  # ordinary text is left as it is


@FUZZ
@given(texts)
@example("\ud800")
@example("a\u202egnp.exe\n\t\x1b[2J")
@example("\x85\x9b31m\x7f")
@example("\ud800\u202e\x1b" * 50_000)
def test_clean_any_text(text):
    from parent.verdict import clean
    assert_clean(clean, text)


def assert_cell(cell, text):
    out = within_contract(cell, text)
    utf8(out)
    assert not controls(out) and "\u2028" not in out and "\u2029" not in out, ascii(out)
    assert out[:1] not in ("=", "+", "-", "@"), ascii(out)
    buf = io.StringIO()
    csv.writer(buf).writerow([out, "next"])
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [[out, "next"]]
    assert buf.getvalue().count("\n") == 1  # one line, too
    assert len(out) <= 32_767  # a spreadsheet's cell


@FUZZ
@given(texts)
@example("=cmd|' /C calc'!A0")
@example("\x00=1+1")  # a sign behind a character clean() takes out
@example("\t=1")
@example("a\nb\r\nc")
@example("\ud800,\"\u2028")
@example("=\n\ud800" * 50_000)
def test_cell_any_text(text):
    from parent.batch import cell
    assert_cell(cell, text)


# ---- LabResult objects with arbitrary text ---------------------------------------------------------------
wild = texts
floats = st.floats() | st.sampled_from([float("nan"), float("inf")])
grid = st.lists(st.lists(floats | st.integers(-3, 3), max_size=5), max_size=5)


def figures():
    return st.builds(m.Figure, kind=st.sampled_from(["heatmap", "losses", "text", "?"]) | texts, title=wild,
                     got=grid, want=grid, values=st.lists(floats, max_size=70), label=wild, text=wild)


def checks():
    from parent.verdict import Check
    from pack.hints import HINTS
    return st.builds(Check, name=wild, points=st.integers(0, 30), doc=wild, passed=st.booleans(),
                     score=st.integers(0, 30), message=wild, hint=st.none() | st.sampled_from(sorted(HINTS)) | texts,
                     kind=st.none() | st.sampled_from([f.value for f in m.Fault]),
                     fault=st.none() | st.sampled_from(list(m.Fault)), trace=st.lists(wild, max_size=3),
                     traceback=wild, figures=st.lists(figures(), max_size=2), seconds=floats,
                     hidden=st.booleans(), skipped=st.booleans(), blame=st.none() | st.sampled_from(sorted(LABS)))


def lab_results():
    from parent.verdict import LabResult
    return st.builds(LabResult, lab=st.sampled_from(sorted(LABS)),
                     status=st.sampled_from(["passed", "failed", "not started", "timeout", "error", "forbidden",
                                             "crashed", "exited", "out of memory"]) | texts,
                     detail=wild, checks=st.lists(checks(), max_size=4), notes=st.lists(wild, max_size=3),
                     held_back=st.tuples(st.integers(0, 3), st.integers(0, 9)), output=wild, internal=wild,
                     seconds=floats, device=wild)


def consoles():
    """A rich Console as the grader makes one, on a StringIO or on a byte file of a strict encoding."""
    from rich.console import Console

    def make(kind, width):
        file = io.StringIO() if kind == "str" else io.TextIOWrapper(io.BytesIO(), encoding=kind, errors="strict")
        return Console(file=file, width=width, highlight=False, soft_wrap=False, color_system=None)
    return st.builds(make, st.sampled_from(["str", "ascii", "utf-8", "latin-1"]), st.sampled_from([60, 110]))


def _console(encoding):
    from rich.console import Console
    return Console(file=io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict"), width=80,
                   color_system=None)


def printed(out) -> str:
    file = out.file
    if isinstance(file, io.StringIO):
        return file.getvalue()
    file.flush()
    return file.buffer.getvalue().decode(file.encoding, "strict")


def assert_scorecard(print_scorecard, results, out, hints, verbose, source):
    within_contract(print_scorecard, results, out, hints, verbose, source, 1.5)
    text = printed(out)
    utf8(text)
    assert not controls(text, allowed="\n"), [ascii(c) for c in controls(text, allowed="\n")][:5]
    assert not results or "Total" in text


def _huge(piece: str, n: int = 20_000):
    from parent.verdict import Check, LabResult
    text = piece * n
    check = Check(text, 1, text, message=text, trace=[text], traceback=text, hint=text, kind="exception",
                  figures=[m.Figure("text", title=text, label=text, text=text), m.Figure("heatmap", title=text)])
    return [LabResult("lab1", text, text, [check], notes=[text], output=text, internal=text, device=text)]


@settings(FUZZ, max_examples=40)
@given(st.lists(lab_results(), max_size=3), consoles(), st.booleans(), st.booleans(), wild)
@example(_huge("\ud800"), _console("utf-8"), True, True, "\udfff")
@example(_huge("é\x1b[2J\u202e\n", 2000), _console("ascii"), False, True, "\x07")
def test_scorecard_prints_on_any_console(results, out, hints, verbose, source):
    from parent.report import print_scorecard
    assert_scorecard(print_scorecard, results, out, hints, verbose, source)


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def assert_results_json(results_json, results, elapsed, error):
    doc = within_contract(results_json, results, elapsed, error)
    back = strict_json(json.dumps(doc))
    for s in strings(back):
        utf8(s)
        assert not controls(s, allowed="\t\n"), ascii(s[:80])
    assert all(isinstance(t["score"], int) for t in back["tests"])


@settings(FUZZ, max_examples=40)
@given(st.lists(lab_results(), max_size=3), floats, st.none() | wild)
@example(_huge("\ud800\x00\u2066"), float("nan"), "\ud800")
@example([], float("inf"), None)
def test_results_json_is_strict_json(results, elapsed, error):
    from parent.report import results_json
    assert_results_json(results_json, results, elapsed, error)


@settings(FUZZ, max_examples=10)
@given(st.lists(lab_results(), max_size=2), floats, st.none() | wild)
def test_results_file_reads_back(tmp_path_factory, results, elapsed, error):
    from parent.report import write_json
    path = tmp_path_factory.mktemp("json") / "results.json"
    within_contract(write_json, path, results, elapsed, error)
    strict_json(path.read_bytes().decode("utf-8"))


def assert_row(row, name, results):
    from parent.batch import columns
    out = within_contract(row, name, results)
    fields = columns([r.lab for r in results])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerow(out)
    utf8(buf.getvalue())
    assert buf.getvalue().count("\n") == 2  # the header and one row, one line each
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert back == [{k: str(out.get(k, "")) for k in fields}]
    for key in [k for k in fields if k == "submission" or k.endswith("_reason")]:
        assert_cell(lambda text: text, back[0][key])


@FUZZ
@given(wild, st.lists(lab_results(), max_size=3, unique_by=lambda r: r.lab))
def test_batch_row_is_one_csv_row(name, results):
    from parent.batch import row
    assert_row(row, name, results)


# ---- every property can fail ------------------------------------------------------------------------------
_OLD_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def old_clean(text):  # parent/verdict.clean before the fix: lone surrogates and bidi overrides kept
    return _OLD_CONTROL.sub("", str(text))


def old_cell(text):  # parent/batch.cell before the fix: newlines kept in a cell
    text = old_clean(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def unbounded_decode(data, expect=None):  # no guard around json.loads
    return codec.from_plain(json.loads(data), expect)


def old_check_blob(blob):  # codec.check_blob before the fix: `in` on a dtype that may be a list
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    return {k: v for k, v in header.items() if v.get("dtype") not in codec.SAFETENSORS_DTYPES}


def lossy_files_blob(files):  # drops empty files
    return codec.files_blob({k: v for k, v in files.items() if v})


def greedy_read_frame(fd, expect=None, reader=os.read):  # allocates what the header claims
    size, head_len = struct.unpack(">QI", reader(fd, 12))
    body = bytearray(size - 4)
    body[:] = reader(fd, size - 4)
    return codec.decode(bytes(body[:head_len]), expect), bytes(body[head_len:])


def bare_scorecard(results, out, hints=False, verbose=False, source="", elapsed=0.0):  # no clean, no fallback
    from rich.text import Text
    for r in results:
        out.print(Text(f"Lab {LABS[r.lab].number} · {r.detail}"))
    out.print("Total")


def nan_results_json(results, elapsed, error=None):  # the text as it came, and the time as it is
    return {"execution_time": elapsed, "output": "\n".join(r.detail for r in results), "tests": []}


def bare_row(name, results):  # the name as it came
    return {"submission": name, "score": 0, "max_score": 0}


def _result(**kw):
    from parent.verdict import LabResult
    return LabResult("lab1", "failed", **kw)


BROKEN = [
    ("decode: RecursionError", lambda: assert_decodes_or_refuses(unbounded_decode, b"[" * 100_000, None)),
    ("decode: float past its range", lambda: assert_decodes_or_refuses(
        lambda d, e: codec.from_plain(json.loads(d) | {"seconds": float(json.loads(d)["seconds"])}, e),
        b'{"$m": "check", "name": "x", "outcome": "passed", "seconds": 1' + b"0" * 400 + b"}", None)),
    ("check_blob: unhashable dtype", lambda: within_contract(old_check_blob,
                                                             struct.pack("<Q", 19) + b'{"a":{"dtype":[1]}}')),
    ("files: empty file lost", lambda: assert_files_round_trip(lossy_files_blob, codec.blob_files, {"a": b""})),
    ("files: __metadata__ lost", lambda: assert_files_round_trip(_old_files_blob, codec.blob_files,
                                                                 {"__metadata__": b"x"})),
    ("read_frame: huge length", lambda: assert_frame_read(greedy_read_frame, frame(b"{}", size=2 ** 63), [], None)),
    ("clean: lone surrogate", lambda: assert_clean(old_clean, "\ud800")),
    ("clean: bidi override", lambda: assert_clean(old_clean, "a\u202eb")),
    ("cell: newline", lambda: assert_cell(old_cell, "a\nb")),
    ("cell: formula", lambda: assert_cell(old_clean, "=1+1")),
    ("scorecard: ascii console", lambda: assert_scorecard(bare_scorecard, [_result(detail="é")], _console("ascii"),
                                                          False, False, "")),
    ("scorecard: surrogate", lambda: assert_scorecard(bare_scorecard, [_result(detail="\ud800")],
                                                      _console("utf-8"), False, False, "")),
    ("scorecard: escape codes", lambda: assert_scorecard(bare_scorecard, [_result(detail="\x1b[2J")],
                                                         _console("utf-8"), False, False, "")),
    ("results.json: NaN", lambda: assert_results_json(nan_results_json, [], float("nan"), None)),
    ("results.json: surrogate", lambda: assert_results_json(nan_results_json, [_result(detail="\ud800")], 0.0, None)),
    ("row: a newline in a name", lambda: assert_row(bare_row, "a\nb", [])),
]


def _old_files_blob(files):  # codec.files_blob before the fix: "__metadata__" accepted, and lost on the way back
    header, offset = {}, 0
    for name, data in files.items():
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(files.values())


@pytest.mark.parametrize("name, run", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_properties_can_fail(name, run):
    with pytest.raises(AssertionError):
        run()


def test_the_fuzz_strategies_reach_the_hard_cases():
    """The generators do make what the properties are about (a property over inputs that never occur proves
    nothing): surrogates, control characters, bidi overrides, huge numbers and non-finite ones."""
    seen = set()

    @settings(FUZZ, max_examples=200, phases=[Phase.generate])
    @given(texts, numbers)
    def look(text, number):
        seen.update({"surrogate" for c in text if 0xD800 <= ord(c) <= 0xDFFF})
        seen.update({"control" for c in text if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f})
        seen.update({"bidi" for c in text if c in BIDI})
        if isinstance(number, int) and abs(number) > 1e308:
            seen.add("past float")
        if isinstance(number, float) and not math.isfinite(number):
            seen.add("non-finite")
    look()
    assert seen == {"surrogate", "control", "bidi", "past float", "non-finite"}


# ---- parent/submission.py: a submission's bytes, its notebook, its export, its folder's name -------------------
from parent.submission import json_nesting_ok, lab_source_from_export, lab_source_from_notebook, read_submission  # noqa: E402
from parent.verdict import clean_name  # noqa: E402

JSON_SOUP = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b'\\"', b",", b":", b'"cells"',
                                      b'"source"', b'"%%lab\\n"', b'"code"', b'"cell_type"', b"1e999", b"\xff"])
                     | st.binary(max_size=6), max_size=60).map(b"".join)
NOTEBOOK_CELLS = st.lists(st.fixed_dictionaries({"cell_type": st.sampled_from(["code", "markdown", 1, None]),
                                                 "source": st.one_of(texts, st.lists(texts, max_size=3), json_values)}),
                          max_size=4)


def assert_notebook_refused_or_read(read, data):
    """A notebook's bytes give its lab text, or ValueError with a reason; nothing else, in bounded time."""
    start = time.monotonic()
    try:
        text = read(data)
        assert isinstance(text, str) and text.endswith("\n")
    except ValueError as exc:
        assert str(exc)
    assert time.monotonic() - start < SECONDS


@FUZZ
@given(JSON_SOUP | NOTEBOOK_CELLS.map(lambda cells: json.dumps({"cells": cells}).encode()) | st.binary(max_size=80))
@example(b'{"cells": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")  # json.loads raised RecursionError
@example(b'{"cells": [{"cell_type": "code", "source": ["%%lab\\n", 1, null]}]}')
@example(b'{"cells": {"cell_type": "code"}}')
@example(b"[]")
def test_notebook_any_bytes(data):
    assert_notebook_refused_or_read(lab_source_from_notebook, data)
    assert json_nesting_ok(data) in (True, False)


def assert_export_read_or_none(read, text):
    start = time.monotonic()
    found = read(text)
    assert found is None or (isinstance(found, str) and found.endswith("\n"))
    assert time.monotonic() - start < SECONDS


EXPORT_SOUP = st.lists(st.sampled_from(["get_ipython()", ".run_cell_magic(", "'lab'", "''", ", ", ")", "(", "\n",
                                        "'''", '"', "\\", "1 + ", "#", "f'{x}'", "\t", "if x:\n", "  ", "\x00",
                                        "'x = 1\\n'"]) | texts, max_size=40).map("".join)


@FUZZ
@given(EXPORT_SOUP)
@example("run_cell_magic\nx = " + "1 + " * 100_000 + "1\n")  # ast.parse raised RecursionError
@example("get_ipython().run_cell_magic('lab', '', 'x = 1\\n')\n" + "(" * 10_000)
@example("get_ipython().run_cell_magic('lab', '', b'x')\n")
def test_export_any_text(text):
    assert_export_read_or_none(lab_source_from_export, text)


NAMES = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_")).filter(
    lambda b: b not in (b".", b".."))


def assert_name_safe(clean_name, name: str):
    shown = clean_name(name)
    shown.encode("utf-8")  # any name prints, and goes into JSON and CSV
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", shown), repr(shown)


@FUZZ
@given(NAMES, st.dictionaries(st.sampled_from(["lab1_attention.py", "lab1_attention.ipynb", "lab2_multihead.py"]),
                              JSON_SOUP | st.binary(max_size=60) | EXPORT_SOUP.map(lambda t: t.encode("utf-8",
                                                                                                      "surrogatepass")),
                              max_size=3))
@example(b"caf\xe9\n\x1b[2J", {"lab1_attention.ipynb": b"[" * 100_000})
def test_a_submission_folder_of_any_name_and_bytes(tmp_path_factory, name, files):
    """read_submission never raises for what a folder holds: each lab is read, absent, or refused with a reason."""
    folder = os.fsencode(tmp_path_factory.mktemp("sub")) + b"/" + name
    os.mkdir(folder)
    for file, data in files.items():
        with open(folder + b"/" + file.encode(), "wb") as f:
            f.write(data)
    sources, refused, found = read_submission(os.fsdecode(folder))
    assert all(type(v) is bytes for v in sources.values()) and all(type(v) is str and v for v in refused.values())
    assert not set(sources) & set(refused) and all(type(v) is str and v for v in found.values())
    assert_name_safe(clean_name, os.fsdecode(name))


def test_the_submission_properties_can_fail():
    """Each property above fails a reader with the old mistakes."""
    def recursing(data):  # the old notebook reader: json.loads first, and RecursionError is not a ValueError
        return json.loads(data.decode("utf-8", errors="replace")) and "x\n"
    with pytest.raises((AssertionError, RecursionError)):
        assert_notebook_refused_or_read(recursing, b"[" * 200_000)

    def parsing(text):  # the old export reader: a syntax tree, whose construction recursed
        import ast
        ast.parse(text)
        return None
    with pytest.raises(RecursionError):
        assert_export_read_or_none(parsing, "x = " + "1 + " * 200_000 + "1\n")

    def old_clean(name):  # control characters dropped, tab, newline and surrogates kept
        return re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", name)
    with pytest.raises(AssertionError):
        assert_name_safe(old_clean, os.fsdecode(b"a\nb"))
    with pytest.raises(UnicodeEncodeError):
        assert_name_safe(old_clean, os.fsdecode(b"caf\xe9"))
