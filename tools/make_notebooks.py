"""Generate the notebooks (notebooks/labN_*.ipynb) from the lab files, as make_stubs.py generates the stubs.

Each notebook: the lab's contract; a setup cell (it finds the pack, or fetches it on Colab from --pack-url); the
lab's imports; one `%%lab` cell per function or class of the lab file (the stub's code, TODOs included) and one for
its other statements; a cell that tries the code; and a cell that grades it. The `%%lab` cells in order make the
lab file again (a notebook handed in is graded that way). worker/notebook.py is what those cells call (it runs in
the student's kernel, beside the student's code).

    python tools/make_notebooks.py                       # rewrite notebooks/
    python tools/make_notebooks.py --check               # exit 1 if notebooks/ is out of date
    python tools/make_notebooks.py --out DIR --pack-url URL --pack-sha256 HEX   # Colab fetches the pack from URL
    python tools/make_notebooks.py --out DIR --filled    # the reference solutions in the cells (for tests)
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from pack.labs import FILES, LABS  # noqa: E402
from worker.notebook import digest  # noqa: E402
from tools.make_stubs import expected_stubs, sync  # noqa: E402

MARKER = re.compile(r"^\s*# (BEGIN|END) SOLUTION.*\n", re.M)
SETUP = '''# Run this first: it finds the lab pack (on Colab it fetches it from PACK_URL) and loads the notebook's helpers.
import pathlib, sys
PACK_URL = {url!r}  # the course's pack: a .zip of its student release, for Colab
PACK_SHA256 = {sha!r}  # that zip's SHA-256: any other zip is refused
here = pathlib.Path.cwd()
root = next((p for p in (here, *here.parents) if (p / "grader.py").is_file()), None)
if root is None and not (PACK_URL and PACK_SHA256):
    raise SystemExit("There is no lab pack beside this notebook: open it from the pack's notebooks/ folder, or from the Colab link your course gave you.")
if root is None:  # unpack the published zip once, and again when it changes; lab files you changed are kept
    import hashlib, io, json, shutil, subprocess, urllib.request, zipfile
    home = pathlib.Path("/content" if pathlib.Path("/content").is_dir() else here) / "transformer-labs"
    root, stamp = home / "pack", home / "unpacked.json"
    known = json.loads(stamp.read_text()) if stamp.is_file() else {{}}
    if known.get("sha256") != PACK_SHA256 or not (root / "grader.py").is_file():
        data = urllib.request.urlopen(PACK_URL).read()
        if hashlib.sha256(data).hexdigest() != PACK_SHA256:
            raise SystemExit(f"The zip at {{PACK_URL}} is not the one this notebook was made for (its SHA-256 differs): open the notebook again from your course's link.")
        shutil.rmtree(home / "unpacking", ignore_errors=True)
        zipfile.ZipFile(io.BytesIO(data)).extractall(home / "unpacking")
        new = min((home / "unpacking").glob("**/grader.py"), key=lambda p: len(p.parts)).parent
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
        shipped = {{p.name: digest(p) for p in (new / "labs").glob("*.py")}}
        for mine in (root / "labs").glob("*") if root.is_dir() else ():  # changed since unpacked: your work, kept
            if mine.is_file() and digest(mine) != known.get("labs", {{}}).get(mine.name):
                shutil.copy2(mine, new / "labs" / mine.name)
        shutil.rmtree(root, ignore_errors=True)
        new.rename(root)
        shutil.rmtree(home / "unpacking", ignore_errors=True)
        stamp.write_text(json.dumps({{"sha256": PACK_SHA256, "labs": shipped}}))
        keep = ("#", "torch", "numpy")  # Colab's own torch and numpy stay: install only the rest
        wanted = [line for line in (root / "requirements.txt").read_text().splitlines() if line and not line.startswith(keep)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
sys.path.insert(0, str(root))
from worker.notebook import grade, setup, try_attention, try_cache, try_gpt, try_module, try_rope
setup({lab!r}, root)'''
INTRO = ("Each cell marked `%%lab` holds part of `labs/{file}`: fill in its TODOs and run it. Running it saves it into "
         "that file, the same file the terminal grader reads (a cell you have not changed keeps the file's own "
         "version), so you can switch between this notebook and a terminal at any time. Then try your code, and grade "
         "it with the last cell: it runs the grader on the file, in a process of its own.")


def chunks(source: str) -> tuple:
    """(imports, {name: text}, rest) of a lab file: its import statements and constants, each top-level function and
    class with the comment lines just above it, and its other statements (lab 2's `mha = ...`). `main` and the
    `if __name__` block stay in the file only."""
    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    imports, defs, rest = [], {}, []
    for node in tree.body:
        text = "".join(lines[node.lineno - 1:node.end_lineno])
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node is not tree.body[0]):
            imports.append(text)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name != "main":
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            defs[node.name] = "".join(lines[first - 1:node.end_lineno])
        elif node is not tree.body[0] and not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)) \
                and not isinstance(node, ast.FunctionDef):
            rest.append(text)
    return "".join(imports), defs, "".join(rest)


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def code(text: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": text.splitlines(keepends=True)}


def notebook(lab: str, source: str, stub: str, url: str = "", sha256: str = "") -> dict:
    """The notebook (nbformat 4.5, as a dict) of `lab` with `source` in its cells (the stub, or a filled-in lab
    file); digests from `stub`; `url` and `sha256`: the published pack's zip and its checksum, for Colab. Written with
    the standard library: the release tool needs nothing more."""
    module, title = LABS[lab].module, LABS[lab].title
    imports, defs, rest = chunks(source)
    shipped = chunks(stub)[1]
    docstring = ast.get_docstring(ast.parse(stub)) or ""
    cells = [md(f"# Lab {LABS[lab].number}: {title}\n\n{INTRO.format(file=FILES[lab])}\n\nThe contract (the checks rely on it "
                f"exactly):\n\n```text\n{docstring}\n```"),
             code(SETUP.format(url=url, sha=sha256, lab=lab)),
             code("%%lab\n" + imports.rstrip("\n"))]
    for name, text in defs.items():
        cells += [md(f"### `{name}`"), code(f"%%lab {digest(shipped.get(name, ''))}\n{text.rstrip()}")]
    if rest:
        cells += [md("The rest of the file (the contract asks for it; it runs once the code above works):"),
                  code("%%lab\n" + rest.rstrip("\n"))]
    if LABS[lab].try_cell:  # the registry's "try it" code
        cells += [md("## Try it\n\nRun your code on small inputs (an error here is printed; grading comes next)."),
                  code("%%try\n" + LABS[lab].try_cell)]
    cells += [md(f"## Grade\n\nRuns `python grader.py {lab}` on `labs/{FILES[lab]}` (the GPU when there is one)."),
              code(f'grade("{lab}")')]
    for i, cell in enumerate(cells):  # stable ids: regenerating gives the same bytes
        cell["id"] = f"{module.replace('_', '-')}-{i}"
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"}, "colab": {"provenance": []}}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def expected_notebooks(url: str = "", filled: bool = False, sha256: str = "") -> dict:
    """{file name: notebook text} for every lab (`url`, `sha256`: where Colab fetches the pack, and its checksum)."""
    stubs = expected_stubs()
    out = {}
    for lab, name in FILES.items():
        source = MARKER.sub("", (ROOT / "solutions" / name).read_text()) if filled else stubs[name]
        text = json.dumps(notebook(lab, source, stubs[name], url, sha256), indent=1, sort_keys=True, ensure_ascii=False)
        out[name.replace(".py", ".ipynb")] = text + "\n"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether notebooks/ is up to date")
    parser.add_argument("--out", type=Path, default=ROOT / "notebooks", help="folder to write (default notebooks/)")
    parser.add_argument("--pack-url", default="", help="where Colab fetches the pack from (a .zip of the release)")
    parser.add_argument("--pack-sha256", default="", help="that zip's SHA-256 (tools/release.py works it out)")
    parser.add_argument("--filled", action="store_true", help="the reference solutions in the cells (for tests)")
    args = parser.parse_args(argv)
    return sync(expected_notebooks(args.pack_url, args.filled, args.pack_sha256), args.out, args.check, "python tools/make_notebooks.py")

if __name__ == "__main__":
    sys.exit(main())
