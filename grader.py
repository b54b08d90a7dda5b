#!/usr/bin/env python
"""Grade the transformer labs.

    python grader.py lab2                      # grade labs/lab2_multihead.py
    python grader.py all --solutions           # grade the reference solutions
    python grader.py all --submission DIR      # grade a folder holding the four lab files
    python grader.py lab1 --json results.json  # also write Gradescope-format results

Each lab's checks run in a child process under a wall-time and memory limit; this process never imports
student code, owns the list of checks and their points, and decides every verdict.
Exit code: 0 when every check of the chosen labs passed, 1 when any failed, 2 for a usage error.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LAB_NAMES = ("lab1", "lab2", "lab3", "lab4")
LAB_FILES = ("lab1_attention.py", "lab2_multihead.py", "lab3_block.py", "lab4_gpt.py")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grader.py", description="Grade the transformer labs.")
    p.add_argument("lab", nargs="?", default="all", choices=[*LAB_NAMES, "all"], help="which lab (default all)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--solutions", action="store_true", help="grade the reference solutions in solutions/")
    source.add_argument("--submission", metavar="DIR", help="grade a folder holding the four lab files")
    p.add_argument("--json", metavar="PATH", help="write Gradescope-format results.json to PATH")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where checks run (default auto)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="wall time per lab (default 60)")
    p.add_argument("--memory", type=float, default=4.0, metavar="GIB", help="memory cap per lab in GiB (default 4)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="labs graded at once")
    p.add_argument("-k", "--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--hints", action="store_true", help="show the longer second hint for each failure")
    p.add_argument("-v", "--verbose", action="store_true", help="show each failure's student frames and the output")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork" if sys.platform == "linux" else "spawn",
                   help="fork children from this preloaded process (fast, Linux) or start fresh interpreters")
    args = p.parse_args(argv)
    if args.submission and not Path(args.submission).is_dir():
        p.error(f"--submission {args.submission}: no such folder")
    if args.timeout <= 0 or args.memory < 0 or args.jobs < 1:
        p.error("--timeout and --jobs must be positive, --memory not negative")
    return args


def resolve_device(requested: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu, asked without initialising CUDA in this process (we fork)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise SystemExit("grader.py: error: --device cuda, but no CUDA device is available")
    return "cuda" if requested == "cuda" or (requested == "auto" and available) else "cpu"


def private_copy(source: Path) -> str:
    """Only the four lab files are taken from a submission: no conftest.py, .pth, sitecustomize or helpers."""
    folder = tempfile.mkdtemp(prefix="labgrade-")
    for name in LAB_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, os.path.join(folder, name))
    return folder


def grade_submissions(submissions, labs, args, device: str, on_done=None) -> dict:
    """Grade `labs` of each (key, folder, display name); returns {key: [LabResult, ...]} in lab order.

    Every (submission, lab) pair is one child; all of them share one scheduler, `args.jobs` at a time.
    """
    from grading.supervise import Task, run_tasks
    from grading.verdict import LabResult, expected_checks, judge, note_dependencies
    copies, results, tasks = {}, {}, []
    try:
        for key, source, display in submissions:
            copies[key] = folder = private_copy(Path(source))
            results[key] = {}
            for lab in labs:
                file = LAB_FILES[LAB_NAMES.index(lab)]
                if not os.path.exists(os.path.join(folder, file)):
                    missing = LabResult(lab, "error", f"{display}/{file} not found", expected_checks(lab, args.check))
                    for c in missing.checks:
                        c.message = "not run: the file is missing"
                    results[key][lab] = missing
                    continue
                select = [c.name for c in expected_checks(lab, args.check)] if args.check else None
                tasks.append(Task(lab, folder, display, device, args.timeout, args.memory, select, key))

        def judged(outcome):
            task = outcome.task
            text = Path(task.lab_dir, LAB_FILES[LAB_NAMES.index(task.lab)]).read_text(errors="replace")
            results[task.key][task.lab] = judge(outcome, expected_checks(task.lab, args.check), text)
            if on_done:
                on_done(task.key, results[task.key][task.lab])

        run_tasks(tasks, jobs=args.jobs, isolation=args.isolation, on_done=judged)
        # a failing lab may only be failing because of an earlier one it builds on: grade those too, for notes only
        probes = [Task(lab, t.lab_dir, t.display_dir, device, args.timeout, args.memory, None, t.key)
                  for t in tasks if results[t.key][t.lab].status != "passed"
                  for lab in LAB_NAMES[:LAB_NAMES.index(t.lab)] if lab not in labs]
        probes = list({(t.key, t.lab): t for t in probes}.values())
        run_tasks(probes, jobs=args.jobs, isolation=args.isolation, on_done=judged)
        for labs_done in results.values():
            note_dependencies([labs_done[lab] for lab in LAB_NAMES if lab in labs_done])
        return {key: [labs_done[lab] for lab in labs] for key, labs_done in results.items()}
    finally:
        for folder in copies.values():
            shutil.rmtree(folder, ignore_errors=True)


def preload(isolation: str):
    """Import once here what every forked child needs, so each child starts in a fraction of a second."""
    if isolation != "fork":
        return
    import pytest  # noqa: F401
    import pytest_timeout  # noqa: F401
    import checkers.plugin  # noqa: F401
    import checkers.runner  # noqa: F401  (imports torch._dynamo: once here, not once per child)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    labs = list(LAB_NAMES) if args.lab == "all" else [args.lab]
    source = ROOT / "solutions" if args.solutions else Path(args.submission) if args.submission else ROOT / "labs"
    display = os.path.relpath(source) if not os.path.relpath(source).startswith("..") else str(source)
    started, results, error = time.monotonic(), [], None
    sys.path.insert(0, str(ROOT))
    try:
        device = resolve_device(args.device)
        from grading import report
        from grading.verdict import expected_checks
        if args.check:
            labs = [lab for lab in labs if expected_checks(lab, args.check)]
            if not labs:
                print(f"grader.py: error: no check matches {args.check}", file=sys.stderr)
                return 2
        preload(args.isolation)
        results = grade_submissions([(None, source, display)], labs, args, device)[None]
        report.print_scorecard(results, report.console(), args.hints, args.verbose, display, time.monotonic() - started)
    except KeyboardInterrupt:
        error = "interrupted"
        print("grader.py: interrupted", file=sys.stderr)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except Exception as exc:  # the grader's own failure: say so, and still write the JSON below
        error = f"{type(exc).__name__}: {exc}"
        print(f"grader.py: internal error: {error}", file=sys.stderr)
    finally:
        if args.json:
            from grading.report import write_json
            write_json(args.json, results, time.monotonic() - started, error)
    return 0 if results and not error and all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
