"""Verdicts: turn a judge's records into per-check results, a lab status and points.

The list of checks and their points comes from the pack (the checker modules' source, read here without importing
it); the judge reports outcomes as protocol/messages.py records. A check without a "passed" record is not
passed; a lab without an end-of-session record did not finish.
"""
import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from pack.labs import LABS, earlier, order
from protocol import messages as m
from protocol.messages import Fault

CHECKERS = Path(__file__).resolve().parent.parent / "checkers"

# terminal control characters (C0 but tab and newline, DEL, C1) and the bidirectional embeddings, overrides, isolates
# and marks (text shown in an order other than its own): a submission's text must not drive a terminal or reorder
# what a TA reads
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_IN_NAME = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")  # and line separators
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate (a name's non-UTF-8 byte, "\\ud800" in JSON)


def _escaped(match) -> str:
    code = ord(match.group())
    # a byte the filesystem's name held that is not UTF-8 (surrogateescape) shows as that byte
    return f"\\x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"\\u{code:04x}"


def clean(text) -> str:
    """Text that came from a submission, safe for a terminal, JSON and CSV: control characters dropped (tab and
    newline kept), lone surrogates written as escapes, so it always encodes as UTF-8."""
    return _CONTROL.sub("", _SURROGATE.sub(_escaped, str(text)))


def clean_name(name) -> str:
    """A submission's folder name, safe everywhere and on one line: any byte a filesystem allows shows as itself or
    as an escape (so two names stay two names), newlines and tabs included."""
    return _IN_NAME.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        _SURROGATE.sub(_escaped, str(name)))


# a lab that broke a rule, or whose grading failed, is awarded no points
UNAWARDED = {"forbidden", "error"}


@dataclass
class Check:
    name: str
    points: int
    doc: str
    passed: bool = False
    score: int = 0
    message: str = ""
    hint: str = None
    kind: str = None  # the fault's name on the wire (protocol.messages.Fault), when the check did not pass
    fault: Fault = None
    trace: list = field(default_factory=list)
    traceback: str = ""
    figures: list = field(default_factory=list)
    seconds: float = 0.0
    hidden: bool = False  # held back for the submission (not in the student release)
    skipped: bool = False  # did not apply to this submission: neither passed nor failed
    blame: str = None  # failed because of this earlier lab, not this one
    rerun: str = None  # why it ran a second time (the machine was busy when it first timed out), in words

    @property
    def title(self) -> str:
        return self.name.removeprefix("test_").replace("_", " ")


@dataclass
class LabResult:
    lab: str
    status: str
    detail: str = ""
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    held_back: tuple = (0, 0)  # (checks, points) that run only at submission: the student release has no code for them
    output: str = ""  # what the student's code printed (its workers' output)
    internal: str = ""  # what the grader's own judge printed: shown only when grading itself failed
    seconds: float = 0.0
    device: str = ""
    # the lab as its visible checks alone have it (a LabResult of those checks: their status, detail and notes),
    # for what students see before the held-back checks are shown; None when the lab has no held-back check here
    shown: "LabResult" = None

    @property
    def score(self) -> int:
        return sum(c.score for c in self.checks)

    @property
    def max_score(self) -> int:
        return sum(c.points for c in self.checks)


_PARSED = {}  # lab -> (the checker file's size and modification time, its tree): a batch reads each once


def _checker(lab: str) -> ast.Module:
    """The lab's checker, parsed (again only when the file changed: a batch asks twice per lab and submission)."""
    path = CHECKERS / f"check_{lab}.py"
    stat = path.stat()
    known = _PARSED.get(lab)
    if known is None or known[0] != (stat.st_size, stat.st_mtime_ns):
        known = _PARSED[lab] = ((stat.st_size, stat.st_mtime_ns), ast.parse(path.read_text(encoding="utf-8")))
    return known[1]


def _marks(fn: ast.FunctionDef) -> tuple:
    """(points, hidden) from a check's `@points(n, hidden=...)`: literals, as every checker writes them."""
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "points":
            n = ast.literal_eval(d.args[0]) if d.args else 1
            hidden = next((ast.literal_eval(k.value) for k in d.keywords if k.arg == "hidden"), False)
            hidden = ast.literal_eval(d.args[1]) if len(d.args) > 1 else hidden
            return int(n), bool(hidden)
    return 1, False


def expected_checks(lab: str, select=None) -> list:
    """The checks of a lab, in file order, with their points: read from the checker's source (nothing of the judge
    is imported here, and never anything from a child)."""
    checks = []
    for node in _checker(lab).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            n, hidden = _marks(node)
            doc = (ast.get_docstring(node) or "").strip().splitlines()
            checks.append(Check(node.name, n, doc[0] if doc else "", hidden=hidden))
    if select:  # a check's name as printed ("upper triangle"), as defined (test_upper_triangle_is_zero) or a part
        wanted = [str(s).strip().lower().replace(" ", "_").replace("-", "_") for s in select]
        checks = [c for c in checks if any(s and s in c.name for s in wanted)]
    return checks


def held_back(lab: str) -> tuple:
    """(checks, points) of the lab's hidden checks that this copy of the pack does not have (the student release
    records them as HELD_BACK when it strips them)."""
    for node in _checker(lab).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HELD_BACK" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            return tuple(value) if isinstance(value, tuple) and len(value) == 2 else (0, 0)
    return (0, 0)


def decide(outcome, checks: list, lab_source: str = None) -> LabResult:
    """A LabResult from a supervise.Outcome (the judge's records) and the expected checks (mutated in place).

    A check scores its points only with a "passed" record. One check that hung, crashed or ran out of memory
    costs that check only; a lab whose import failed, that broke a rule (forbidden) or whose judge did not
    finish scores what its finished checks earned, and a forbidden lab scores 0.
    """
    task = outcome.task
    records, names = outcome.records, {c.name for c in checks}
    regraded = [r for r in records if isinstance(r, m.Regraded)]
    if regraded:  # the lab started over on the submission's own earlier labs: only the last run's checks count
        last = max(i for i, r in enumerate(records) if isinstance(r, m.Regraded))
        records = [r for i, r in enumerate(records) if i > last or not isinstance(r, (m.Imported, m.CheckDone))]
    by_name = {}
    for r in records:
        if isinstance(r, m.CheckDone) and r.name in names:
            if getattr(by_name.get(r.name), "outcome", None) != "failed":  # a failure always wins
                by_name[r.name] = r
    end = next((r for r in records if isinstance(r, m.End)), None)
    start = next((r for r in records if isinstance(r, m.Start)), None)
    imported = next((r for r in records if isinstance(r, m.Imported)), None)
    forbidden = [r.message for r in records if isinstance(r, m.RuleBroken)]
    forbidden += [r.message for r in by_name.values() if r.failure and r.failure.fault is Fault.FORBIDDEN]

    for c in checks:
        r = by_name.get(c.name)
        if r:
            c.skipped = r.outcome == "skipped"
            c.passed = r.outcome in ("passed", "skipped")
            c.message, c.seconds, c.figures = clean(r.message), r.seconds, list(r.figures)
            f = r.failure
            if f is not None:
                c.blame = f.blame if f.blame in earlier(task.lab) else None
                c.hint, c.fault, c.kind = f.hint, f.fault, f.fault.value
                c.trace, c.traceback = [clean(t) for t in f.trace], clean(f.traceback)
            if r.rerun is not None:
                c.rerun = rerun_note(r.rerun.usage)
    limit = f"{task.timeout * m.WALL_FACTOR:g} s"
    status, detail = _status(outcome, checks, imported, forbidden, end, lab_source, limit)

    missing = "not finished: the lab was stopped after " + limit if status == "timeout" else "not run"
    for c in checks:
        if c.name not in by_name:
            c.message = "not run" if imported and not imported.ok else missing
        if status == "not started" and c.kind in ("not_started", None):
            c.message, c.hint = "not started", None
        c.score = c.points if c.passed and status not in UNAWARDED else 0

    output = end.output if end else ""
    result = LabResult(task.lab, status, clean(detail), checks, output=clean(output), internal=clean(outcome.output),
                       seconds=outcome.seconds, device=start.device if start else task.device,
                       held_back=held_back(task.lab) if task.select is None else (0, 0))
    failures = [by_name[c.name].failure for c in checks if c.name in by_name and by_name[c.name].failure]
    failures += [imported.failure] if imported and imported.failure else []
    regraded_notes = [clean(r.note) for r in regraded]
    result.notes = regraded_notes + _notes(task.lab, checks, failures)
    if any(c.hidden for c in checks):  # the same lab as its visible checks alone say it, for students before the due date
        shown = [c for c in checks if not c.hidden]
        status, detail = _status(outcome, shown, imported, forbidden, end, lab_source, limit)
        failures = [by_name[c.name].failure for c in shown if c.name in by_name and by_name[c.name].failure]
        failures += [imported.failure] if imported and imported.failure else []
        result.shown = LabResult(task.lab, status, clean(detail), shown, regraded_notes + _notes(task.lab, shown, failures),
                                 result.held_back, result.output, seconds=result.seconds, device=result.device)
    return result


def _notes(lab: str, checks: list, failures: list) -> list:
    """A lab's notes from these checks and failures: an earlier lab to fix first, a check that ran twice."""
    notes, number = [], LABS[lab].number
    for c in checks:
        if c.blame and not c.passed:
            notes.append(f"Lab {number} passes with the pack's own lab {LABS[c.blame].number}, but not with your "
                         f"{LABS[c.blame].file}: fix lab {LABS[c.blame].number} first (python grader.py {c.blame}).")
    for c in checks:
        if c.rerun:
            notes.append(f"“{c.title}” was re-run once: {c.rerun}; the second run counts.")
    blockers = sorted({f.origin for f in failures if f.fault is Fault.BLOCKED and f.origin in LABS}, key=order)
    for blocker in blockers:
        notes.append(f"Some failures come from {LABS[blocker].file}: fix lab {LABS[blocker].number} first "
                     f"(python grader.py {blocker}).")
    return notes


def _status(outcome, checks: list, imported, forbidden: list, end, lab_source, limit: str) -> tuple:
    """(status, detail) of a lab from its judge's outcome and these checks' results (decide: every check, or the
    visible ones alone: what the lab-wide records say, a rule broken included, holds for both)."""
    faults = [c for c in checks if c.fault is not None and c.fault.of_worker]

    if outcome.error:
        status, detail = "error", outcome.error
    elif forbidden:
        status, detail = "forbidden", forbidden[0]
    elif outcome.timed_out:
        status, detail = "timeout", f"stopped at its wall-clock bound of {limit} (an endless loop, or far too slow)"
    elif outcome.signal is not None or end is None:
        status, detail = "error", "the grader's judge process did not finish (this is the grader's fault, not yours)"
    elif imported and not imported.ok:
        fault = imported.failure.fault if imported.failure else Fault.EXCEPTION
        status = fault.status if fault.of_worker or fault is Fault.NOT_STARTED else "error"
        if fault is Fault.BLOCKED and lab_source is not None and "raise NotImplementedError" in lab_source:
            status = "not started"
        detail = imported.failure.message if imported.failure else ""
        if fault in (Fault.SYNTAX, Fault.EXCEPTION) or fault.of_worker:
            detail = "could not import the lab: " + detail
    elif faults:
        status = faults[0].fault.status
        detail = f"{faults[0].title}: {faults[0].message}" + (f" ({len(faults) - 1} more check(s) too)" if len(faults) > 1 else "")
    elif checks and all(c.passed for c in checks if not c.blame):  # an earlier lab's fault is noted, not charged
        status, detail = "passed", ""
    elif checks and all(c.kind == "not_started" for c in checks if not c.skipped) or (  # the rest waits on an earlier
            checks and all(c.kind in ("not_started", "blocked") for c in checks if not c.skipped)  # lab's TODOs
            and any(c.kind == "not_started" for c in checks) and "raise NotImplementedError" in (lab_source or "")):
        first = next((c.message for c in checks if c.kind == "not_started"), checks[0].message)
        first = first.removeprefix("not implemented yet: ")
        status, detail = "not started", f"every check reached a TODO (NotImplementedError). First TODO: {first}"
    else:
        status, detail = "failed", ""
    return status, detail


def rerun_note(usage) -> str:
    """Why a check ran twice, in words, from the first try's Usage."""
    if usage is None:
        return "the machine was busy"
    return (f"the machine was busy (its worker got {usage.cpu:.1f} s of CPU in {usage.wall:.1f} s and waited "
            f"{usage.waited:.1f} s for one)")


def note_dependencies(results: list):
    """A lab that fails while an earlier lab it builds on fails says so (never changes any verdict); the labs' visible
    views (LabResult.shown) are noted from the visible views alone."""
    _note_dependencies(results, results)
    _note_dependencies([r.shown for r in results if r.shown is not None], [r.shown or r for r in results])


def _note_dependencies(targets: list, views: list):
    failing = [r.lab for r in views if r.status != "passed"]
    for r in targets:
        before = [lab for lab in failing if order(lab) < order(r.lab)]
        if r.status != "passed" and before and not [n for n in r.notes if "was re-run once" not in n]:
            first = LABS[before[0]].number
            r.notes.append(f"Lab {LABS[r.lab].number} builds on lab {first}, which is not passing yet: fix lab "
                           f"{first} first.")
