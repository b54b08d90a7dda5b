"""Helpers for the pack's own tests: build submission folders and grade many of them in one grader process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pack.labs import CORE, FILES

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LAB_FILES = dict(FILES)


def _total() -> int:
    from parent.verdict import expected_checks
    return sum(c.points for lab in CORE for c in expected_checks(lab))


TOTAL = _total()  # every check's points, the core labs (what `all` grades)


def submission(folder: Path, lab: str = None, edits=(), source=None) -> Path:
    """A copy of the solutions in `folder`, with lab's file edited by (old, new) replacements or replaced by `source`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in LAB_FILES.values():
        shutil.copyfile(ROOT / "solutions" / name, folder / name)
    if lab:
        path = folder / LAB_FILES[lab]
        text = source if source is not None else path.read_text()
        for old, new in edits:
            assert old in text, f"{lab}: edit target not found: {old!r}"
            text = text.replace(old, new)
        path.write_text(text)
    return folder


def grade_many(specs: dict, timeout: float = 30, memory: float = 4, jobs: int = 2, extra=(), env=None) -> dict:
    """{key: (folder, [labs])} -> {key: {lab: result dict}}, graded by one `grader.py`-machinery process (`env`:
    variables set for it, PYTHONHASHSEED say)."""
    request = {key: [str(folder), labs] for key, (folder, labs) in specs.items()}
    code = (
        "import json, sys; from types import SimpleNamespace; import grader; from parent import grade\n"
        "req, opts = json.loads(sys.stdin.read()), json.loads(sys.argv[1])\n"
        "args = SimpleNamespace(check=None, isolation='fork', **opts)\n"
        "grade.preload('fork', sorted({l for _, ls in req.values() for l in ls})); out = {}\n"
        "def render(r):  # the scorecard in colour and without, at 80 and 160 columns: None, or why it broke\n"
        "    import io, traceback; from rich.console import Console; from parent import report\n"
        "    for width in (80, 160):\n"
        "        for colour in (None, 'truecolor'):\n"
        "            try:\n"
        "                out = Console(file=io.StringIO(), width=width, color_system=colour, force_terminal=bool(colour))\n"
        "                report.print_scorecard([r], out, hints=True, verbose=True)\n"
        "            except Exception:\n"
        "                return traceback.format_exc()[-2000:]\n"
        "for labs in sorted({tuple(l) for _, l in req.values()}):\n"
        "    subs = [(k, f, f) for k, (f, l) in req.items() if tuple(l) == labs]\n"
        "    for key, results in grade.grade_submissions(subs, list(labs), args, 'cpu').items():\n"
        "        out[key] = {r.lab: {'status': r.status, 'detail': r.detail, 'score': r.score, 'max': r.max_score,\n"
        "                    'notes': r.notes, 'output_chars': len(r.output), 'checks': {c.name: {'passed': c.passed, 'message': c.message,\n"
        "                    'hint': c.hint, 'kind': c.kind} for c in r.checks}, 'render': render(r)} for r in results}\n"
        "print('@@' + json.dumps(out))\n")
    opts = json.dumps({"timeout": timeout, "memory": memory, "jobs": jobs})
    proc = subprocess.run([PY, "-c", code, opts, *extra], input=json.dumps(request), capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, **env} if env else None)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert marker, f"grading failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(marker[-1][2:])


# Defence in depth: the tests of confinement and of what a worker can see run code the static rules refuse (exec,
# ctypes, inspect), so they grade with the scan switched off in the grading process, and show that each runtime
# defence holds on its own. (A student cannot do this: the scan runs in the judge, on the source the parent read.)
WITHOUT_SCAN = "import judge.static as _static; _static.scan_source = lambda source, filename='<lab>', own=None: []"


def run_grader(*args, timeout=300, env=None, cwd=ROOT, patch: str = None):
    """grader.py with `args`; with `patch`, Python run in the grading process first (see WITHOUT_SCAN)."""
    env = {**os.environ, **env} if env else None
    start = [PY, str(ROOT / "grader.py")] if patch is None else [
        PY, "-c", f"{patch}\nimport sys; sys.path.insert(0, {str(ROOT)!r}); import grader; sys.exit(grader.main())"]
    return subprocess.run([*start, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
