"""Batch grading: every sub-folder of a folder is one submission; one CSV row per submission.

The CSV is rewritten as submissions finish (at most once a second, and at the end or on an interruption), each
time as a fresh temporary file renamed over it, so only the grader writes it and an interrupted run loses nothing;
a re-run skips every submission already in the CSV (delete a row, or the file, to grade again). A submission that
hangs or crashes is recorded with its status and the batch goes on; whatever goes wrong with one submission (its
files, its name, its grading, its row) is that submission's "error" row with a reason. A folder name of any bytes
is kept, escaped where it is not printable, and a cell a spreadsheet would read as a formula (=, +, -, @) is quoted
with a leading apostrophe.
"""
import csv
import io
import re
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

COLUMNS = ["submission", "score", "max_score"]
CELL = 32_000  # characters in a cell: under a spreadsheet's limit (32767) and csv.field_size_limit() (131072)
_BREAKS = re.compile("[\t\n\u2028\u2029]")  # what clean() keeps that would split a cell's line


def columns(labs) -> list:
    return COLUMNS + [f"{lab}_{what}" for lab in labs for what in ("score", "status", "notes")]


def done_already(path: Path) -> list:
    """The rows of an earlier run's CSV (none when there is no such file)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return [r for r in csv.DictReader(f) if r.get("submission")]


def cell(text: str, name: bool = False) -> str:
    """A CSV cell a spreadsheet shows as text, on one line: no control characters (a tab or a line break is a space),
    no leading formula sign, at most CELL characters (so csv's own reader reads the file back); a submission's name
    keeps every byte it had, escaped where it is not printable (see verdict.clean_name)."""
    from parent.verdict import clean, clean_name
    text = clean_name(text) if name else _BREAKS.sub(" ", clean(text))
    text = text[:CELL]
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def row(name: str, results) -> dict:
    out = {"submission": cell(name, name=True), "score": sum(r.score for r in results), "max_score": sum(r.max_score for r in results)}
    for r in results:
        out[f"{r.lab}_score"], out[f"{r.lab}_status"] = r.score, cell(r.status)
        # why a lab was not graded or stopped (a TA reads it in the gradebook), and "fix lab N first" notes
        why = [r.detail[:300]] if r.detail and r.status not in ("passed", "failed") else []
        out[f"{r.lab}_notes"] = cell(" ".join([*why, *r.notes]))
    return out


def run_batch(folder, labs, args, device, hide=()) -> int:
    """Grade every submission in `folder` not yet in args.csv; returns the process exit code."""
    from parent.grade import grade_submissions
    from parent.report import write_atomic
    folder, out = Path(folder), Path(args.csv)
    submissions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = done_already(out)
    skip = {r["submission"] for r in rows}
    todo = [p for p in submissions if cell(p.name, name=True) not in skip]
    fields = columns(labs)
    print(f"{len(submissions)} submissions in {cell(str(folder))}: {len(submissions) - len(todo)} already in "
          f"{cell(str(out))}, grading {len(todo)} ({len(labs)} lab(s) each, {args.jobs} at a time)", file=sys.stderr)

    def save():
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(out, text.getvalue())

    save()
    finished, started = {}, time.monotonic()
    saved = [started]

    def save_soon():  # at most one rewrite a second: a class of 5,000 does not rewrite the CSV 5,000 times
        if time.monotonic() - saved[0] >= 1.0:
            save()
            saved[0] = time.monotonic()

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("grading", total=len(todo) * len(labs))

        def lab_done(key, result):
            bar.advance(task)
            finished.setdefault(key, {})[result.lab] = result
            if len(finished[key]) == len(labs):  # the submission is complete: its row goes in now
                try:
                    rows.append(row(key, [finished[key][lab] for lab in labs]))
                except Exception as exc:  # noqa: BLE001  (the grader's own bug: this row says so, the batch goes on)
                    rows.append({"submission": cell(key, name=True), "score": 0, "max_score": "",
                                 **{f"{lab}_status": "error" for lab in labs},
                                 **{f"{lab}_notes": f"the grader could not write this row ({type(exc).__name__})"
                                    for lab in labs}})
                save_soon()
                if not sys.stderr.isatty():
                    print(f"graded {cell(key, name=True)}: " + ", ".join(f"{lab} {finished[key][lab].status}"
                                                                         for lab in labs), file=sys.stderr)

        try:
            grade_submissions([(p.name, p, p.name) for p in todo], labs, args, device, on_done=lab_done, probe=False,
                              hide=(*hide, str(folder.resolve())))
        finally:  # interrupted or not, every finished row is in the CSV
            save()
    seconds = time.monotonic() - started
    print(f"wrote {cell(str(out))}: {len(todo)} submissions graded in {seconds:.2f} s "
          f"({len(todo) / max(seconds, 1e-9):.2f} per second)", file=sys.stderr)
    return 0
