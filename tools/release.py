"""Write the student release of the pack: everything students need, nothing of the solutions.

    python tools/release.py OUT_DIR            # OUT_DIR must be missing or empty
    python tools/release.py OUT_DIR --force    # empty OUT_DIR first
    python tools/release.py OUT_DIR --pack-url URL   # also OUT_DIR.zip, to host at URL for Colab (--zip PATH)

The release holds labs/ (stubs regenerated from solutions/, so never stale), notebooks/ (generated from those;
--pack-url tells them where to fetch the pack on Colab), checkers/ without the checks held back for submission
(`@points(n, hidden=True)`: each checker file keeps only their count and points, as HELD_BACK), pack/, protocol/,
parent/, judge/, worker/,
grader.py, pytest.ini, requirements.txt, requirements-notebooks.txt, Dockerfile, .dockerignore and README.md without
its instructors-only regions (from a line `<!-- instructors-only -->` to a line `<!-- /instructors-only -->`, markers
included). No solutions/, tools/, tests/ or bench/, and not the stand-ins that are plain code (lab 4's:
HELD_BACK_FILES): a student's copy grades the later labs on the student's own lab 4.

With --pack-url, the release is also zipped (the same bytes for the same release: entries sorted, times fixed), and
OUT_DIR's notebooks get the URL and the zip's SHA-256, which their setup cell checks before it unpacks anything on
Colab. The notebooks inside the zip carry neither (a checksum cannot be part of what it sums); they find the pack
around them. Publish OUT_DIR's notebooks (a public GitHub repository) and host the zip at URL.
"""
import argparse
import ast
import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, tools/ is on sys.path but the repository root is not
    sys.path.insert(0, str(ROOT))

from tools.make_notebooks import expected_notebooks  # noqa: E402
from tools.make_stubs import expected_stubs  # noqa: E402

PACKAGES = ("pack", "protocol", "parent", "judge", "checkers", "worker")  # copied as their .py files
FILES = ("grader.py", "pytest.ini", "requirements.txt", "requirements-notebooks.txt", "Dockerfile")
OPTIONAL_FILES = (".dockerignore",)
HELD_BACK_FILES = (Path("worker/standins/lab4_gpt.py"),)  # a working lab 4 in plain code: for submissions only
BEGIN_PRIVATE, END_PRIVATE = "<!-- instructors-only -->", "<!-- /instructors-only -->"


def package_files(package: str) -> list:
    """The .py files of one of the pack's packages, relative to the repository root (no __pycache__)."""
    return sorted(p.relative_to(ROOT) for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def student_readme(text: str) -> str:
    """README.md without its instructors-only regions, and without the doubled blank line a removal leaves."""
    out, private, seam = [], False, False
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        marker = line.strip()
        if marker == BEGIN_PRIVATE:
            if private:
                raise ValueError(f"README.md:{number}: nested {BEGIN_PRIVATE}")
            private = True
        elif marker == END_PRIVATE:
            if not private:
                raise ValueError(f"README.md:{number}: {END_PRIVATE} without {BEGIN_PRIVATE}")
            private, seam = False, True
        elif not private:
            if not (seam and not marker and (not out or not out[-1].strip())):
                out.append(line)
            seam = False
    if private:
        raise ValueError(f"README.md: unterminated {BEGIN_PRIVATE}")
    return "".join(out)


def _hidden_points(node) -> int:
    """The points of a check marked @points(n, hidden=True), or None when it is not one."""
    for d in getattr(node, "decorator_list", []):
        if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "points" and any(
                k.arg == "hidden" and isinstance(k.value, ast.Constant) and k.value.value is True for k in d.keywords):
            return d.args[0].value if d.args and isinstance(d.args[0], ast.Constant) else 1
    return None


def without_hidden_checks(source: str) -> str:
    """A checker file without its hidden checks (decorators and the blank lines before them included), ending with
    HELD_BACK = (how many, their points) when it had any."""
    lines = source.splitlines(keepends=True)
    cut = [(min(d.lineno for d in node.decorator_list), node.end_lineno, _hidden_points(node))
           for node in ast.parse(source).body if _hidden_points(node) is not None]
    for start, end, _ in sorted(cut, reverse=True):
        while start > 1 and not lines[start - 2].strip():
            start -= 1
        del lines[start - 1:end]
    text = "".join(lines).rstrip("\n") + "\n"
    if cut:
        text += (f"\n\n# checks held back for the submission: they run when you submit (how many, points)\n"
                 f"HELD_BACK = ({len(cut)}, {sum(p for _, _, p in cut)})\n")
    return text


def write_release(out: Path) -> list:
    """Write the release into `out` (missing or empty); returns the paths of the files written (its notebooks find
    the pack around them; `publish` gives them a URL and checksum to fetch it from on Colab)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    texts = {Path("labs", name): text for name, text in expected_stubs().items()}
    texts.update({Path("notebooks", name): text for name, text in expected_notebooks().items()})
    texts[Path("README.md")] = student_readme((ROOT / "README.md").read_text())
    copies = [Path(name) for name in FILES] + [Path(name) for name in OPTIONAL_FILES if (ROOT / name).is_file()]
    copies += [path for package in PACKAGES for path in package_files(package) if path not in HELD_BACK_FILES]
    for path in [p for p in copies if p.parent == Path("checkers") and p.name.startswith("check_")]:
        texts[path] = without_hidden_checks((ROOT / path).read_text())
        copies.remove(path)
    written = []
    for rel, text in texts.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
        written.append(out / rel)
    for rel in copies:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, out / rel)
        written.append(out / rel)
    return written


def write_zip(folder: Path, path: Path, top: str = "transformer-labs") -> str:
    """Zip `folder` into `path` under one folder `top`, the same bytes for the same files (sorted, fixed times and
    modes); returns the zip's SHA-256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            info = zipfile.ZipInfo(f"{top}/{file.relative_to(folder).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, file.read_bytes())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(out: Path, pack_url: str, zip_path: Path) -> str:
    """Zip the release in `out` into `zip_path`, then give `out`'s notebooks the URL and the zip's SHA-256; returns
    the checksum."""
    sha256 = write_zip(out, zip_path)
    for name, text in expected_notebooks(pack_url, sha256=sha256).items():
        (out / "notebooks" / name).write_text(text)
    return sha256


def empty_folder(folder: Path):
    """Remove everything inside `folder` (a symlink is removed, never followed)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write the release into")
    parser.add_argument("--force", action="store_true", help="empty OUT_DIR first when it is not empty")
    parser.add_argument("--pack-url", default="", metavar="URL",
                        help="where the notebooks fetch the pack from on Colab (this release, zipped and published)")
    parser.add_argument("--zip", type=Path, metavar="PATH", help="with --pack-url: where to write the zip "
                        "(default OUT_DIR.zip)")
    args = parser.parse_args(argv)
    if args.zip and not args.pack_url:
        parser.error("--zip goes with --pack-url")
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        parser.error(f"{args.out} exists and is not a folder")
    if out == ROOT or out in ROOT.parents:  # --force would wipe the pack itself
        parser.error(f"{args.out} holds the pack; choose another folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            parser.error(f"{args.out} is not empty (use --force to empty it first)")
        empty_folder(out)
    zip_path = (args.zip or out.with_name(out.name + ".zip")).resolve()
    if args.pack_url and (zip_path == out or out in zip_path.parents):
        parser.error(f"{zip_path} is inside {args.out}; write the zip elsewhere")
    written = write_release(out)
    print(f"wrote {len(written)} files to {args.out}")
    if args.pack_url:
        sha256 = publish(out, args.pack_url, zip_path)
        print(f"wrote {zip_path} (SHA-256 {sha256}): host it at {args.pack_url}; {args.out}/notebooks fetch it "
              f"from there and refuse any other zip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
