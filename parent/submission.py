"""The parent reads submissions: the lab files of a folder, once, before any worker runs (standard library only).

Only regular files of at most 1 MB are taken (a symlink, FIFO or device is refused with a reason), read without
following links and without blocking. A lab handed in as its notebook (`lab1_attention.ipynb`, up to 20 MB) or as
the notebook downloaded as a script counts as the lab file its `%%lab` cells make.
"""
import ast
import json
import os
import stat
from pathlib import Path

from pack.labs import REGISTRY

MAX_BYTES = 1 << 20
MAX_NOTEBOOK = 20 << 20


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


def read_submission(source: Path) -> tuple:
    """({file: bytes}, {file: why it was refused}) for the lab files: nothing else of a submission is read; every
    judge and worker works from these bytes."""
    sources, refused = {}, {}
    for lab in REGISTRY:
        name = lab.file
        try:
            data = read_lab_file(str(source / name))
            exported = lab_source_from_export(data.decode("utf-8", errors="replace")) if b"run_cell_magic" in data else None
            sources[name] = exported.encode() if exported is not None else data
        except FileNotFoundError:
            try:
                notebook = read_lab_file(str(source / lab.notebook), limit=MAX_NOTEBOOK)
                sources[name] = lab_source_from_notebook(notebook).encode()
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                refused[name] = f"{lab.notebook}: {getattr(exc, 'strerror', None) or exc}"
        except OSError as exc:
            refused[name] = exc.strerror or str(exc)
    return sources, refused


def lab_source_from_notebook(data: bytes) -> str:
    """The lab file a notebook (.ipynb) holds: its `%%lab` cells in order, the magic line dropped. ValueError when
    it is not a notebook of the pack's."""
    try:
        cells = json.loads(data.decode("utf-8", errors="replace")).get("cells", [])
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"not a readable notebook ({exc})") from None
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
    of its `get_ipython().run_cell_magic('lab', ...)` calls; None when the text is not such a script."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") ==
                    "run_cell_magic" and len(n.args) == 3 and all(isinstance(a, ast.Constant) for a in n.args)
                    and n.args[0].value == "lab"), key=lambda n: n.lineno)
    if not calls:
        return None
    return "\n\n\n".join(str(c.args[2].value).strip("\n") for c in calls) + "\n"


def find_lab_files(folder: Path) -> Path:
    """The folder holding the lab files: `folder` itself, or the one sub-folder an upload unpacked them into."""
    names = [*(lab.file for lab in REGISTRY), *(lab.notebook for lab in REGISTRY)]  # a notebook stands for its file
    if any((folder / name).is_file() for name in names):
        return folder
    found = sorted(p.parent for name in names for p in folder.rglob(name))
    return found[0] if found else folder


