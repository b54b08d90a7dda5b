"""Generate the student stubs in labs/ from the reference solutions in solutions/.

Each region between `# BEGIN SOLUTION: <what to write>` and `# END SOLUTION` is replaced by
a TODO comment and a `raise NotImplementedError`, at the same indentation. Everything else
(docstrings, signatures, imports) is copied as it is, so stubs never drift from solutions.

    python tools/make_stubs.py           # rewrite labs/
    python tools/make_stubs.py --check   # exit 1 if labs/ is out of date
"""
import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, tools/ is on sys.path but the repository root is not
    sys.path.insert(0, str(ROOT))
from pack.labs import FILES  # noqa: E402

LAB_FILES = tuple(FILES.values())
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION: (.+)$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


def stub_source(solution: str, lab: str) -> str:
    """The stub text for one solution file."""
    out, todo = [], None
    for number, line in enumerate(solution.splitlines(keepends=True), 1):
        begin = BEGIN.match(line)
        if begin:
            if todo is not None:
                raise ValueError(f"{lab}:{number}: nested BEGIN SOLUTION")
            indent, todo = begin.group(1), begin.group(2).strip()
            message = f"{lab}: {todo}".replace("\\", "\\\\").replace('"', '\\"')
            out += [f"{indent}# TODO: {todo}\n", f'{indent}raise NotImplementedError("{message}")\n']
        elif END.match(line):
            if todo is None:
                raise ValueError(f"{lab}:{number}: END SOLUTION without BEGIN")
            todo = None
        elif todo is None:
            out.append(line)
    if todo is not None:
        raise ValueError(f"{lab}: unterminated BEGIN SOLUTION")
    return "".join(out)


def solution_regions(solution: str) -> list:
    """The code inside each solution region (used to prove a release leaks none of it)."""
    return [m.group(1) for m in re.finditer(r"# BEGIN SOLUTION:[^\n]*\n(.*?)\n\s*# END SOLUTION", solution, re.S)]


def expected_stubs(solutions_dir: Path = ROOT / "solutions") -> dict:
    return {name: stub_source((solutions_dir / name).read_text(), name.removesuffix(".py")) for name in LAB_FILES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether labs/ is up to date")
    parser.add_argument("--out", type=Path, default=ROOT / "labs", help="folder to write (default labs/)")
    args = parser.parse_args(argv)
    return sync(expected_stubs(), args.out, args.check, "python tools/make_stubs.py")


def sync(expected: dict, out: Path, check: bool, command: str) -> int:
    """Write each {name: text} of `expected` into `out` where it differs (check: only report); 1 when stale files
    were found in check mode."""
    stale = [name for name, text in expected.items() if not ((out / name).exists() and (out / name).read_text() == text)]
    if check:
        if stale:
            print("out of date: " + ", ".join(stale) + f" (run: {command})")
            return 1
    else:
        for name in stale:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(expected[name])
    print(("wrote " + ", ".join(stale)) if stale and not check else f"{out} is up to date")
    return 0

if __name__ == "__main__":
    sys.exit(main())
