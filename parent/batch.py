"""Batch grading: every sub-folder of a folder is one student's submission, graded into a gradebook (parent/gradebook.py).

The gradebook (the CSV and its checks file) is rewritten as submissions finish (at most once a second, and at the
end or on an interruption), each time as a fresh temporary file renamed over it, so only the grader writes it and
an interrupted run loses nothing. A re-run grades only what the gradebook lacks: a new submission, or a lab a row
has not been graded on (`bonus` after `all` adds the bonus columns and keeps the others); `--regrade NAME...`
grades the named submissions again. `--shard I/N` grades the submissions whose names hash to shard I of N, for
`grader.py merge` to join. A submission that hangs or crashes is recorded with its status and the batch goes on;
whatever goes wrong with one submission (its files, its name, its grading, its row) is that submission's "error" row
with a reason. A folder name of any bytes is kept, escaped where it is not printable, and a cell a spreadsheet
would read as a formula (=, +, -, @) is quoted with a leading apostrophe.
"""
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from parent import gradebook
from parent.gradebook import Entry, GradebookError, LabRecord, cell, columns, record  # noqa: F401  (the row API)

NOT_SUBMISSIONS = {"__macosx"}  # a zip's resource forks


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def row(name: str, results) -> dict:
    """One CSV row for a submission's LabResults (what the batch writes for it)."""
    entry = Entry(cell(name, name=True), labs={r.lab: record(r, now(), "") for r in results})
    return gradebook.row(entry, [r.lab for r in results])


def list_submissions(folder: Path) -> tuple:
    """([sub-folder, ...] by name, [what was passed over, with why]) for a batch's folder: each sub-folder is one
    submission, except hidden ones and a zip's __MACOSX; a file at the top is no submission."""
    folders, passed_over = [], []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            shown = cell(entry.name, name=True)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not is_dir:
                passed_over.append(f"{shown} (a file: each submission is a folder)")
            elif entry.name.startswith(".") or entry.name.lower() in NOT_SUBMISSIONS:
                passed_over.append(f"{shown} (a hidden or system folder)")
            else:
                folders.append(Path(entry.path))
    return folders, passed_over


def lab_maxima(labs) -> dict:
    from parent.verdict import expected_checks
    return {lab: sum(c.points for c in expected_checks(lab)) for lab in labs}


def run_batch(folder, labs, args, device, hide=()) -> int:
    """Grade what the gradebook at args.csv lacks of the submissions in `folder`; returns the process exit code."""
    from parent.grade import grade_submissions
    folder, out = Path(folder), Path(args.csv)
    version = gradebook.version()
    shard = getattr(args, "shard", None)
    try:
        book = gradebook.load(out)
        students = gradebook.read_roster(args.roster) if getattr(args, "roster", None) else None
        every, passed_over = list_submissions(folder)
    except (GradebookError, OSError) as exc:
        print(f"grader.py: error: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    if passed_over:
        print(f"not graded: {', '.join(passed_over[:10])}{' ...' if len(passed_over) > 10 else ''}", file=sys.stderr)
    mine = [p for p in every if gradebook.in_shard(p.name, shard)]
    regrade = set(getattr(args, "regrade", None) or ())
    names = {p.name for p in every} | {cell(p.name, name=True) for p in every}
    unknown = sorted(regrade - names)
    if unknown:
        print(f"grader.py: error: --regrade {cell(unknown[0])}: no such submission in {cell(str(folder))}",
              file=sys.stderr)
        return 2
    if students is not None:
        added = shard is None or shard[0] == 1  # the roster's students with no folder: in one shard only
        stray = gradebook.match_roster(book, students, [p.name for p in mine], [p.name for p in every], added)
        for entry in book.values():
            if not entry.submission:
                for lab, best in lab_maxima(labs).items():
                    entry.labs.setdefault(lab, LabRecord("missing", 0, best, "no submission", 0.0, now(), version))
        if stray:
            print(f"not on the roster: {', '.join(cell(s, name=True) for s in stray[:10])}"
                  f"{' ...' if len(stray) > 10 else ''}", file=sys.stderr)
    todo = {}  # folder -> the labs it needs
    for p in mine:
        entry = book.get(cell(p.name, name=True))
        need = [lab for lab in labs if p.name in regrade or cell(p.name, name=True) in regrade or entry is None
                or lab not in entry.labs]
        if need:
            todo[p] = need
    where = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of them)" if shard else ""
    print(f"{len(every)} submissions in {cell(str(folder))}{where}: {len(mine) - len(todo)} already in "
          f"{cell(str(out))}, grading {len(todo)} ({len(labs)} lab(s) each, {args.jobs} at a time)", file=sys.stderr)

    def save():
        gradebook.save(book, out, version)

    save()
    finished, started = {}, time.monotonic()
    saved = [started]

    def save_soon():  # at most one rewrite a second: a class of 5,000 does not rewrite the CSV 5,000 times
        if time.monotonic() - saved[0] >= 1.0:
            save()
            saved[0] = time.monotonic()

    by_key = {cell(p.name, name=True): p for p in todo}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("grading", total=sum(map(len, todo.values())))

        def lab_done(key, result):
            bar.advance(task)
            finished.setdefault(key, {})[result.lab] = result
            need = todo[by_key[key]]
            if len(finished[key]) < len(need):
                return
            entry = book.setdefault(key, Entry(key))  # the submission is complete: its labs go in now
            when = now()
            for lab in need:
                try:
                    entry.labs[lab] = record(finished[key][lab], when, version)
                except Exception as exc:  # noqa: BLE001  (the grader's own bug: this lab says so, the batch goes on)
                    entry.labs[lab] = LabRecord("error", 0, 0, f"the grader could not record this lab "
                                                f"({type(exc).__name__})", 0.0, when, version)
            save_soon()
            if not sys.stderr.isatty():
                print(f"graded {key}: " + ", ".join(f"{lab} {cell(finished[key][lab].status)}" for lab in need),
                      file=sys.stderr)

        try:
            for need in sorted({tuple(n) for n in todo.values()}):  # usually one group: every lab for everyone
                group = [p for p, n in todo.items() if tuple(n) == need]
                grade_submissions([(cell(p.name, name=True), p, p.name) for p in group], list(need), args, device,
                                  on_done=lab_done, probe=False, hide=(*hide, str(folder.resolve())))
        finally:  # interrupted or not, every finished row is in the CSV
            save()
    seconds = time.monotonic() - started
    print(f"wrote {cell(str(out))}: {len(todo)} submissions graded in {seconds:.2f} s "
          f"({len(todo) / max(seconds, 1e-9):.2f} per second)", file=sys.stderr)
    return finish(book, out, args)


def finish(book: dict, out: Path, args) -> int:
    """After a batch or a merge: the Canvas file when asked for, and the class report beside the CSV."""
    canvas = getattr(args, "canvas", None)
    if canvas:
        from parent.report import write_atomic
        write_atomic(canvas, gradebook.canvas_text(book))
        print(f"wrote {cell(str(canvas))} (Canvas: Grades > Import)", file=sys.stderr)
    from parent.classreport import write_report
    written = write_report(out)
    if written:
        print(f"wrote {cell(str(written))}", file=sys.stderr)
    return 0


def merge(out, parts, args) -> int:
    """`grader.py merge OUT PART.csv...`: the shards' gradebooks as one (the rows one batch would have written)."""
    book = {}
    try:
        for part in parts:
            if not Path(part).is_file():
                raise GradebookError(f"{part}: no such file")
            gradebook.merge_into(book, gradebook.load(part))
    except GradebookError as exc:
        print(f"grader.py merge: error: {exc}", file=sys.stderr)
        return 2
    gradebook.save(book, out, gradebook.version())
    print(f"wrote {cell(str(out))}: {len(book)} rows from {len(parts)} file(s)", file=sys.stderr)
    return finish(book, Path(out), args)
