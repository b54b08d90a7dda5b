"""The parent reads submissions: the lab files of a folder, once, before any worker runs (standard library only).

Only regular files are taken (a symlink, FIFO or device is refused with a reason), read without following links and
without blocking. A lab handed in as its notebook (`lab1_attention.ipynb`, up to 20 MB) or as the notebook
downloaded as a script counts as the lab file its `%%lab` cells make. Whatever the source, a lab's text is at most
1 MB, and every parse of a submission's bytes is bounded before it starts: a notebook's JSON nesting is measured
without recursion before it is parsed, an export is read token by token (no syntax tree), and the search for an
upload's lab files is bounded in depth and count.
"""
import ast
import io
import itertools
import json
import os
import re
import stat
import tokenize
from pathlib import Path

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


def read_submission(source: Path, memory: float = 4.0) -> tuple:
    """({file: bytes}, {file: why it was refused}) for the lab files: nothing else of a submission is read; every
    judge and worker works from these bytes. Never raises for what a submission holds: each lab's reason is its own.
    Each read may use at most `memory` GiB (--memory) beyond what this process already holds."""
    sources, refused = {}, {}
    for lab in REGISTRY:
        try:
            with memory_cap(memory):
                sources[lab.file] = read_lab(source, lab)
        except FileNotFoundError:
            pass
        except MemoryError:
            refused[lab.file] = f"it needs more than --memory ({memory:g} GiB) for the grader to read it"
        except (OSError, ValueError) as exc:
            refused[lab.file] = str(getattr(exc, "strerror", None) or exc)
        except Exception as exc:  # noqa: BLE001  (a bug of the reader's: this lab's reason, not the batch's end)
            refused[lab.file] = f"the grader could not read it ({type(exc).__name__})"
    return sources, refused


def read_lab(source: Path, lab) -> bytes:
    """A lab's text from its file, its notebook or a notebook export; FileNotFoundError when there is none."""
    try:
        data = read_lab_file(str(source / lab.file))
    except FileNotFoundError:
        try:
            notebook = read_lab_file(str(source / lab.notebook), limit=MAX_NOTEBOOK)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise OSError(f"{lab.notebook}: {exc.strerror or exc}") from None
        try:
            return capped(lab_source_from_notebook(notebook), lab.notebook)
        except ValueError as exc:
            raise ValueError(f"{lab.notebook}: {exc}") from None
    if b"run_cell_magic" in data:
        exported = lab_source_from_export(data.decode("utf-8", errors="replace"))
        if exported is not None:
            return capped(exported, lab.file)
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


def find_lab_files(folder: Path) -> Path:
    """The folder holding the lab files: `folder` itself, or the first sub-folder (breadth first, at most MAX_DEPTH
    levels and MAX_ENTRIES entries looked at, links not followed) that an upload unpacked them into."""
    names = {*(lab.file for lab in REGISTRY), *(lab.notebook for lab in REGISTRY)}  # a notebook stands for its file
    level, seen = [str(folder)], 0
    for _ in range(MAX_DEPTH + 1):
        below = []
        for path in sorted(level):
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > MAX_ENTRIES:
                            return folder
                        if entry.name in names and entry.is_file(follow_symlinks=False):
                            return Path(path)
                        if entry.is_dir(follow_symlinks=False):
                            below.append(entry.path)
            except OSError:
                continue
        level = below
        if not level:
            break
    return folder
