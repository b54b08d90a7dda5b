"""Verdicts: turn a judge's records into per-check results, a lab status and points.

The list of checks and their points comes from the pack (the checker modules, imported here; no student code
runs in this process or in the judge); the judge reports outcomes. A check without a "passed" record is not
passed; a lab without an end-of-session record did not finish.
"""
import importlib
import re
from dataclasses import dataclass, field

from checkers.common import HINTS, LABS

# terminal control characters (C0 but tab and newline, DEL, C1): a submission's text must not drive a terminal
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text) -> str:
    """Text that came from a submission (or its folder's name), safe for a terminal, JSON and CSV."""
    return _CONTROL.sub("", str(text))


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
    kind: str = None
    trace: list = field(default_factory=list)
    traceback: str = ""
    figures: list = field(default_factory=list)
    seconds: float = 0.0
    hidden: bool = False  # held back for the submission (not in the student release)
    skipped: bool = False  # did not apply to this submission: neither passed nor failed
    blame: str = None  # failed because of this earlier lab, not this one

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

    @property
    def score(self) -> int:
        return sum(c.score for c in self.checks)

    @property
    def max_score(self) -> int:
        return sum(c.points for c in self.checks)


def expected_checks(lab: str, select=None) -> list:
    """The checks of a lab, in file order, with their points (read from the pack, never from a child)."""
    module = importlib.import_module(f"checkers.check_{lab}")
    checks = [Check(name, getattr(fn, "points", 1), (fn.__doc__ or "").strip().splitlines()[0],
                    hidden=getattr(fn, "hidden", False))
              for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)]
    if select:  # a check's name as printed ("upper triangle"), as defined (test_upper_triangle_is_zero) or a part
        wanted = [str(s).strip().lower().replace(" ", "_").replace("-", "_") for s in select]
        checks = [c for c in checks if any(s and s in c.name for s in wanted)]
    return checks


def held_back(lab: str) -> tuple:
    """(checks, points) of the lab's hidden checks that this copy of the pack does not have (the student release
    records them in HELD_BACK when it strips them)."""
    value = getattr(importlib.import_module(f"checkers.check_{lab}"), "HELD_BACK", (0, 0))
    return tuple(value) if isinstance(value, tuple) and len(value) == 2 else (0, 0)


# a check that ran into one of these gets the matching status; the lab shows the first of them
CHECK_STATUS = {"timeout": "timeout", "crashed": "crashed", "exit": "exited", "oom": "out of memory"}


def decide(outcome, checks: list, lab_source: str = None) -> LabResult:
    """A LabResult from a supervise.Outcome (the judge's records) and the expected checks (mutated in place).

    A check scores its points only with a "passed" record. One check that hung, crashed or ran out of memory
    costs that check only; a lab whose import failed, that broke a rule (forbidden) or whose judge did not
    finish scores what its finished checks earned, and a forbidden lab scores 0.
    """
    task = outcome.task
    records = [r for r in outcome.records if isinstance(r, dict)]
    by_name = {}
    for r in records:
        if r.get("type") == "check" and r.get("name") in {c.name for c in checks}:
            if by_name.get(r["name"], {}).get("outcome") != "failed":  # a failure always wins
                by_name[r["name"]] = r
    end = next((r for r in records if r.get("type") == "end"), None)
    start = next((r for r in records if r.get("type") == "start"), {})
    imported = next((r for r in records if r.get("type") == "import"), None)
    forbidden = [str(r.get("message", "")) for r in records if r.get("type") == "forbidden"]
    forbidden += [str(r["message"]) for r in by_name.values() if r.get("kind") == "forbidden"]

    for c in checks:
        r = by_name.get(c.name)
        if r:
            c.skipped = r.get("outcome") == "skipped"
            c.passed = r.get("outcome") in ("passed", "skipped")
            earlier = list(LABS)[:list(LABS).index(task.lab)]
            c.blame = r.get("blame") if r.get("blame") in earlier else None
            c.message, c.hint, c.kind = clean(r.get("message", "")), r.get("hint"), r.get("kind")
            c.trace, c.seconds = [clean(t) for t in r.get("trace") or []], float(r.get("seconds") or 0.0)
            c.traceback, c.figures = clean(r.get("traceback", "")), [f for f in r.get("figures") or [] if isinstance(f, dict)]
    faults = [c for c in checks if c.kind in CHECK_STATUS]

    limit = f"{task.timeout:g} s"
    if outcome.error:
        status, detail = "error", outcome.error
    elif forbidden:
        status, detail = "forbidden", forbidden[0]
    elif outcome.timed_out:
        status, detail = "timeout", f"stopped after its time limit of {limit} (an endless loop, or far too slow)"
    elif outcome.signal is not None or end is None:
        status, detail = "error", "the grader's judge process did not finish (this is the grader's fault, not yours)"
    elif imported and not imported.get("ok"):
        kind = imported.get("kind")
        status = {"not_started": "not started", "exit": "exited", "oom": "out of memory", "timeout": "timeout",
                  "crashed": "crashed"}.get(kind, "error")
        if kind == "blocked" and lab_source is not None and "raise NotImplementedError" in lab_source:
            status = "not started"
        detail = str(imported.get("message", ""))
        if kind in ("syntax", "exception", "crashed", "exit", "timeout", "oom"):
            detail = "could not import the lab: " + detail
    elif faults:
        status = CHECK_STATUS[faults[0].kind]
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

    missing = "not finished: the lab was stopped after " + limit if status == "timeout" else "not run"
    for c in checks:
        if c.name not in by_name:
            c.message = "not run" if imported and not imported.get("ok") else missing
        if status == "not started" and c.kind in ("not_started", None):
            c.message, c.hint = "not started", None
        c.score = c.points if c.passed and status not in UNAWARDED else 0

    output = str(end.get("output", "")) if end else ""
    result = LabResult(task.lab, status, clean(detail), checks, output=clean(output), internal=clean(outcome.output),
                       seconds=outcome.seconds, device=str(start.get("device", task.device)),
                       held_back=held_back(task.lab) if task.select is None else (0, 0))
    for c in checks:
        if c.blame and not c.passed:
            result.notes.append(f"Lab {task.lab[3]} passes with the pack's own lab {c.blame[3]}, but not with your "
                                f"{LABS[c.blame][0]}.py: fix lab {c.blame[3]} first (python grader.py {c.blame}).")
    blockers = sorted({r.get("origin") for r in list(by_name.values()) + [imported or {}]
                       if r.get("kind") == "blocked" and r.get("origin") in LABS})
    for lab in blockers:
        result.notes.append(f"Some failures come from {LABS[lab][0]}.py: fix lab {lab[3]} first "
                            f"(python grader.py {lab}).")
    return result


def note_dependencies(results: list):
    """A lab that fails while an earlier lab it builds on fails says so (never changes any verdict)."""
    failing = [r.lab for r in results if r.status != "passed"]
    for r in results:
        earlier = [lab for lab in failing if lab < r.lab]
        if r.status != "passed" and earlier and not r.notes:
            r.notes.append(f"Lab {r.lab[3]} builds on lab {earlier[0][3]}, which is not passing yet: fix lab "
                           f"{earlier[0][3]} first.")


def hint_text(key, deep: bool = False) -> str:
    first, second = HINTS.get(key, ("", ""))
    return f"{first} {second}".strip() if deep and second else first
