"""The parent reads submissions: the lab files of a folder, once, before any worker runs (standard library only).

Only regular files are taken (a symlink, FIFO or device is refused with a reason), read without following links and
without blocking. A lab handed in as its notebook (`lab1_attention.ipynb`, up to 20 MB) or as the notebook
downloaded as a script counts as the lab file its `%%lab` cells make. Whatever the source, a lab's text is at most
1 MB, and every parse of a submission's bytes is bounded before it starts: a notebook's JSON nesting is measured
without recursion before it is parsed, an export is read token by token (no syntax tree), and the search for an
upload's lab files is bounded in depth and count.
"""
import ast
import codecs
import io
import itertools
import json
import os
import re
import stat
import tokenize
from pathlib import Path
from typing import NamedTuple

from pack.labs import REGISTRY
from pack.memory import capped as memory_cap

MAX_BYTES = 1 << 20  # a lab's text, from a file, a notebook or an export
MAX_NOTEBOOK = 20 << 20
MAX_NESTING = 64  # JSON levels in a notebook (the pack's notebooks use 5)
MAX_DEPTH, MAX_ENTRIES = 8, 20000  # the search of an upload for its lab files


def read_lab_file(path: str, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes; OSError with a plain reason for anything but a regular file of at most `limit` bytes."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise OSError(f"{os.path.basename(path)} is a symbolic link; submit the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{os.path.basename(path)} is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.path.basename(path)} is not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(f"{os.path.basename(path)} is larger than {limit >> 20} MB")
    return data


class Submission(NamedTuple):
    """What the parent read of one submission: {file: UTF-8 bytes}, {file: why it was refused} and {file: which
    upload it graded, when that was not simply the file by its own name, or for a lab with no file, the files that
    were there instead} (a note for the scorecard)."""
    sources: dict
    refused: dict
    found: dict


def read_submission(source: Path, memory: float = 4.0) -> Submission:
    """The lab files of a submission, found wherever the upload put them (find_uploads): nothing else of a
    submission is read; every judge and worker works from these bytes. Never raises for what a submission holds:
    each lab's reason is its own. Each read may use at most `memory` GiB (--memory) beyond what this process
    already holds."""
    sources, refused, found = {}, {}, {}
    try:
        uploads, others = find_uploads(Path(source))
    except OSError as exc:
        return Submission({}, {lab.file: f"the submission could not be read ({exc.strerror or exc})"
                               for lab in REGISTRY}, {})
    for lab in REGISTRY:
        candidates = uploads.get(lab.name, [])
        if not candidates:
            if others:  # no lab file: the note is why (names a student may have meant)
                found[lab.file] = (f"expected {lab.file} (or {lab.notebook}); found: "
                                     + ", ".join(others[:MAX_LISTED]) + (", ..." if len(others) > MAX_LISTED else ""))
            continue
        chosen = candidates[0]
        try:
            with memory_cap(memory):
                sources[lab.file] = read_lab(Path(source) / chosen.path, chosen.kind)
        except MemoryError:
            refused[lab.file] = f"it needs more than --memory ({memory:g} GiB) for the grader to read it"
        except (OSError, ValueError) as exc:
            refused[lab.file] = str(getattr(exc, "strerror", None) or exc)
        except Exception as exc:  # noqa: BLE001  (a bug of the reader's: this lab's reason, not the batch's end)
            refused[lab.file] = f"the grader could not read it ({type(exc).__name__})"
        note = found_note(lab, candidates)
        if note:
            found[lab.file] = note
    return Submission(sources, refused, found)


class Upload(NamedTuple):
    path: str  # relative to the submission's folder, "/"-separated
    kind: str  # "file" (a .py, or a notebook downloaded as a script) or "notebook" (.ipynb)
    mtime: int  # nanoseconds
    exact: bool  # the lab's own name (in whichever folder)


def lab_of(name: str):
    """(Lab, kind) for a file name an upload may give a lab: the lab's own name in any case, through the copies
    browsers and Drive make ("lab3_block (1).py", "Copy of lab3_block.py", "lab3_block - Copy.py", "lab3_block
    copy 2.py"), spaces or hyphens for underscores; None for any other name."""
    stem, dot, ext = name.rpartition(".")
    kind = {"py": "file", "ipynb": "notebook"}.get(ext.lower()) if dot else None
    if kind is None or len(stem) > 200:
        return None
    stem = _COPY_OF.sub("", stem.strip().lower())
    while True:
        shorter = _COPY_MARK.sub("", stem).strip()
        if shorter == stem:
            break
        stem = shorter
    lab = _MODULES.get(re.sub(r"[\s\-]+", "_", stem))
    return (lab, kind) if lab else None


_COPY_OF = re.compile(r"^(?:copy\s+of\s+)+")
_COPY_MARK = re.compile(r"(?:\s*\(\d{1,4}\)|\s*-\s*copy|\s+copy(?:\s+\d{1,4})?)$")
_MODULES = {lab.module: lab for lab in REGISTRY}
SKIPPED = {"__macosx", ".ipynb_checkpoints", "__pycache__", ".git", ".venv", "venv", "node_modules"}
MAX_LISTED = 6


def find_uploads(folder: Path) -> tuple:
    """({lab: [Upload, ...] best first}, [other .py and .ipynb files seen]) for a submission's folder: its files and
    those of its sub-folders, breadth first, at most MAX_DEPTH levels and MAX_ENTRIES entries looked at, links not
    followed, with folders no lab lives in (a zip's __MACOSX, Jupyter's checkpoints, caches, hidden folders)
    skipped. The newest candidate of a lab comes first; between equally new ones, its own name, then a .py before a
    notebook, then the shallower, then by path."""
    uploads, others, seen = {}, [], 0
    level = [""]
    top = os.fspath(folder)
    for depth in range(MAX_DEPTH + 1):
        below = []
        for rel in sorted(level):
            try:
                with os.scandir(os.path.join(top, rel) if rel else top) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
            except OSError:
                if not rel:
                    raise
                continue
            for entry in listed:
                seen += 1
                if seen > MAX_ENTRIES:
                    return _ranked(uploads), others
                path = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name.lower() not in SKIPPED and not entry.name.startswith("."):
                            below.append(path)
                        continue
                    match = lab_of(entry.name)
                    if match is None:
                        if entry.name.lower().endswith((".py", ".ipynb")) and len(others) <= MAX_LISTED:
                            others.append(path)
                        continue
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                except OSError:
                    continue
                lab, kind = match
                exact = entry.name in (lab.file, lab.notebook)
                uploads.setdefault(lab.name, []).append((Upload(path, kind, mtime, exact), depth))
        level = below
        if not level:
            break
    return _ranked(uploads), others


def _ranked(uploads: dict) -> dict:
    return {lab: [u for u, _ in sorted(found, key=lambda f: (-f[0].mtime, not f[0].exact, f[0].kind != "file",
                                                            f[1], f[0].path))]
            for lab, found in uploads.items()}


def found_note(lab, candidates) -> str:
    """What the scorecard says about the upload graded as `lab`: nothing when it is the lab's own file, alone."""
    chosen = candidates[0]
    if len(candidates) == 1 and chosen.exact:
        return ""
    from parent.verdict import clean_name
    shown = lambda u: clean_name(u.path)  # noqa: E731
    note = f"graded {shown(chosen)} as {lab.file}" if not chosen.exact else f"graded {shown(chosen)}"
    if len(candidates) > 1:
        rest = [shown(u) for u in candidates[1:MAX_LISTED]] + (["..."] if len(candidates) > MAX_LISTED else [])
        note += f" (the newest of {len(candidates)}; also found: {', '.join(rest)})"
    return note


def read_lab(path: Path, kind: str = "file") -> bytes:
    """A lab's text (UTF-8) from its file, its notebook or a notebook export."""
    if kind == "notebook":
        name = path.name
        notebook = text_bytes(read_lab_file(str(path), limit=MAX_NOTEBOOK))
        try:
            return capped(lab_source_from_notebook(notebook), name)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    data = text_bytes(read_lab_file(str(path)))
    if b"run_cell_magic" in data:
        exported = lab_source_from_export(data.decode("utf-8", errors="replace"))
        if exported is not None:
            return capped(exported, path.name)
    return data


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def text_bytes(data: bytes) -> bytes:
    """A text file's bytes as UTF-8 with no byte-order mark: a file an editor saved as UTF-8 with a BOM, or as
    UTF-16 or UTF-32 (Windows' "Unicode"), with a BOM or, for UTF-16, without one (every other byte zero). Anything
    else is returned as it is (a lab's reader then decodes it as UTF-8)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding).encode("utf-8", errors="surrogatepass")
            except UnicodeError:
                return data
    if len(data) >= 2 and b"\0" in data[:4096]:
        head = data[:4096]
        for encoding, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
            if zeros.count(0) >= 0.9 * len(zeros):
                try:
                    return data.decode(encoding).encode("utf-8", errors="surrogatepass")
                except UnicodeError:
                    pass
    return data


def capped(text: str, name: str) -> bytes:
    data = text.encode("utf-8", errors="replace")
    if len(data) > MAX_BYTES:
        raise ValueError(f"its %%lab cells come to {len(data) / (1 << 20):.1f} MB; a lab's text may be at most "
                         f"{MAX_BYTES >> 20} MB")
    return data


_STRING = re.compile(rb'"[^"]*"')  # a JSON string, once its escapes (\\ and \") are gone
_BRACKETS = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))  # openers +1, closers -1 (as signed bytes)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_nesting_ok(data: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether JSON text nests at most `limit` levels, measured without recursion before any parse: escapes and
    strings removed, each bracket turned into +1 or -1, and the running sum's maximum taken a chunk at a time (a
    deep text stops at its first chunk)."""
    outside = _STRING.sub(b"", data.replace(b"\\\\", b"").replace(b'\\"', b""))
    signs = memoryview(outside.translate(_BRACKETS, _NOT_BRACKETS)).cast("b")
    depth = 0
    for start in range(0, len(signs), 1 << 16):
        chunk = signs[start:start + (1 << 16)]
        if max(itertools.accumulate(chunk, initial=depth)) > limit:
            return False
        depth += sum(chunk)
    return True


def lab_source_from_notebook(data: bytes) -> str:
    """The lab file a notebook (.ipynb) holds: its `%%lab` cells in order, the magic line dropped. ValueError when
    it is not a notebook of the pack's."""
    if not json_nesting_ok(data):
        raise ValueError(f"not a readable notebook (nested more than {MAX_NESTING} levels deep)")
    try:
        cells = json.loads(data.decode("utf-8", errors="replace")).get("cells", [])
    except (ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a readable notebook ({type(exc).__name__})") from None
    parts = []
    for cell in cells if isinstance(cells, list) else []:
        source = cell.get("source", "") if isinstance(cell, dict) and cell.get("cell_type") == "code" else ""
        source = "".join(map(str, source)) if isinstance(source, list) else str(source)
        if source.startswith("%%lab"):
            parts.append(source.partition("\n")[2].strip("\n"))
    if not parts:
        raise ValueError("the notebook has no %%lab cells (is it one of the lab pack's notebooks?)")
    return "\n\n\n".join(parts) + "\n"


def lab_source_from_export(text: str):
    """The lab file inside a notebook downloaded as a .py script (Colab's or Jupyter's "Download .py"): the sources
    of its `get_ipython().run_cell_magic('lab', '', '...')` calls; None when the text is not such a script. Read
    token by token (no syntax tree, so no depth to exhaust); a text the tokenizer refuses is not an export."""
    found, window = [], []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            window = (window + [tok])[-9:]  # . run_cell_magic ( 'lab' , '' , SOURCE )
            kinds = [(t.type, t.string) for t in window]
            if len(kinds) == 9 and kinds[0] == (tokenize.OP, ".") and kinds[1] == (tokenize.NAME, "run_cell_magic") \
                    and kinds[2] == (tokenize.OP, "(") and kinds[4] == kinds[6] == (tokenize.OP, ",") \
                    and kinds[8] == (tokenize.OP, ")") and all(window[i].type == tokenize.STRING for i in (3, 5, 7)):
                name, _, source = (ast.literal_eval(window[i].string) for i in (3, 5, 7))
                if name == "lab" and isinstance(source, str):
                    found.append(source.strip("\n"))
    except Exception:  # noqa: BLE001  (tokenize's and literal_eval's refusals: not an export)
        return None
    return "\n\n\n".join(found) + "\n" if found else None
