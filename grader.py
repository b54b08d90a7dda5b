#!/usr/bin/env python
"""Grade the transformer labs.

    python grader.py lab2                      # grade labs/lab2_multihead.py
    python grader.py all --solutions           # grade the reference solutions
    python grader.py all --submission DIR      # grade a folder holding the lab files
    python grader.py lab1 --json results.json  # also write Gradescope-format results
    python grader.py all --batch DIR --roster roster.csv   # a class into grades.csv, with a report beside it
    python grader.py merge grades.csv shard*.csv           # join the gradebooks of --shard I/N runs
    python grader.py report grades.csv                     # the class report (HTML) from a batch's gradebook

Each lab is judged in a child process (the judge) that never runs student code: it asks a worker process, forked
from a zygote that holds torch and nothing of the grader, to run the student's code, and decides every verdict
from the plain data that comes back. This process owns the list of checks, their points and the limits.
Exit code: 0 when every check of the chosen labs passed, 1 when any failed, 2 for a usage error.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # the grader never writes its own tree (nor could a worker's poisoned cache count)

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from pack.labs import CORE, FILES, GROUPS  # noqa: E402  (standard library only)

LAB_NAMES = tuple(FILES)
LAB_FILES = tuple(FILES.values())
VISIBILITY = ("visible", "hidden", "after_due_date", "after_published")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grader.py", description="Grade the transformer labs.")
    p.add_argument("lab", nargs="*", default=["all"], metavar="LAB",
                   help=f"{LAB_NAMES[0]} .. {LAB_NAMES[-1]}, several of them, all ({', '.join(CORE)}, the default) or "
                        f"bonus ({', '.join(GROUPS['bonus'])})")
    p.add_argument("--solutions", action="store_true", help="grade the reference solutions in solutions/")
    p.add_argument("--submission", metavar="DIR", help="grade a folder holding the lab files")
    p.add_argument("--json", metavar="PATH", help="write Gradescope-format results.json to PATH")
    p.add_argument("--own-labs", action="store_true",
                   help="grade each lab on the submission's own earlier labs, not the pack's stand-ins for them "
                        "(one bug then costs points in every lab built on it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where checks run (default auto)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="CPU seconds per lab for its workers, within a wall-clock bound three times longer (default 60)")
    p.add_argument("--memory", type=float, default=4.0, metavar="GIB", help="memory cap per lab in GiB (default 4)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="labs graded at once")
    p.add_argument("-k", "--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--hints", action="store_true", help="show the longer second hint for each failure")
    p.add_argument("-v", "--verbose", action="store_true", help="show each failure's student frames and the output")
    p.add_argument("--batch", metavar="DIR", help="grade every sub-folder of DIR (one submission each) into --csv")
    p.add_argument("--csv", metavar="PATH", default="grades.csv",
                   help="the gradebook, one row per submission (beside it: its checks file and the class report)")
    p.add_argument("--roster", metavar="PATH",
                   help="with --batch: a CSV with a folder or id column (and name, email), or Gradescope's "
                        "submission_metadata.yml, for each row's student id, name and email")
    p.add_argument("--regrade", nargs="+", metavar="NAME", help="with --batch: grade these submissions again")
    p.add_argument("--shard", metavar="I/N", help="with --batch: grade only shard I of N (join them with merge)")
    p.add_argument("--canvas", metavar="PATH", help="with --batch: also write the grades as Canvas imports them")
    p.add_argument("--gradescope", action="store_true",
                   help="grade $GRADESCOPE_ROOT/submission (default /autograder) into results/results.json")
    p.add_argument("--visibility", default="visible", choices=VISIBILITY,
                   help="Gradescope visibility of each check (default visible)")
    p.add_argument("--hidden-visibility", default="after_due_date", choices=VISIBILITY,
                   help="Gradescope visibility of the checks held back for submission (default after_due_date)")
    p.add_argument("--docker", action="store_true", help="run the same grading inside the grading image")
    p.add_argument("--image", default="transformer-labs-grader:latest", help="image for --docker")
    p.add_argument("--dry-run", action="store_true", help="with --docker: print the docker command, run nothing")
    p.add_argument("--watch", action="store_true",
                   help="stay running and grade again each time a lab file is saved (Ctrl-C to stop)")
    p.add_argument("--hide", action="append", default=[], metavar="DIR",
                   help="a folder (or file) workers must not see, besides the pack, the submissions, the results and "
                        "the home folder (repeatable; where workers get a mount namespace)")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork" if sys.platform == "linux" else "spawn",
                   help="fork children from this preloaded process (fast, Linux) or start fresh interpreters")
    args = p.parse_args(argv)
    unknown = [lab for lab in args.lab if lab not in (*LAB_NAMES, *GROUPS)]
    if unknown:
        p.error(f"unknown lab {unknown[0]!r}: choose from {', '.join(LAB_NAMES)}, all or bonus")
    args.labs = [lab for lab in LAB_NAMES if lab in args.lab or any(lab in GROUPS[g] for g in GROUPS if g in args.lab)]
    sources = [bool(args.solutions), bool(args.submission), bool(args.batch), bool(args.gradescope)]
    if sum(sources) > 1:
        p.error("choose one of --solutions, --submission, --batch, --gradescope")
    for flag, folder in (("--submission", args.submission), ("--batch", args.batch)):
        if folder and not Path(folder).is_dir():
            p.error(f"{flag} {folder}: no such folder")
    for folder in args.hide:
        if not os.path.lexists(folder):
            p.error(f"--hide {folder}: no such folder or file")
    if args.solutions and not (ROOT / "solutions").is_dir() and not args.docker:
        p.error("--solutions: this copy of the pack has no solutions/ folder")
    if args.watch and (args.batch or args.gradescope or args.docker or args.json):
        p.error("--watch grades one folder on screen: not with --batch, --gradescope, --docker or --json")
    if args.dry_run and not args.docker:
        p.error("--dry-run goes with --docker")
    if args.docker and args.hide:
        p.error("--hide goes with grading on this machine: the image sees none of its folders anyway")
    if args.docker and (args.batch or args.gradescope):
        p.error("--docker grades one submission; run --batch or --gradescope inside the image instead")
    for flag in ("roster", "regrade", "shard", "canvas"):
        if getattr(args, flag) and not args.batch:
            p.error(f"--{flag} goes with --batch")
    if args.shard:
        from parent.gradebook import parse_shard  # standard library only
        try:
            args.shard = parse_shard(args.shard)
        except ValueError as exc:
            p.error(str(exc))
    if args.roster and not Path(args.roster).is_file():
        p.error(f"--roster {args.roster}: no such file")
    if args.timeout <= 0 or args.memory < 0 or args.jobs < 1:
        p.error("--timeout and --jobs must be positive, --memory not negative")
    return args


def resolve_device(requested: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu, asked without initialising CUDA in this process (we fork)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    # numpy's OpenBLAS (numpy comes with torch; safetensors uses it) would start a thread per core in every judge and
    # worker that touches it, each spinning a while after every call: the grader's arrays are tiny, one thread does
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise SystemExit("grader.py: error: --device cuda, but no CUDA device is available")
    return "cuda" if requested == "cuda" or (requested == "auto" and available) else "cpu"


SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && source .venv/bin/activate"


def missing_package():
    """The first package the grader needs that this Python lacks, or None."""
    import importlib.util
    return next((name for name in ("torch", "safetensors", "rich") if importlib.util.find_spec(name) is None), None)


def watch(source: Path, labs, args, device: str, display: str, hide) -> int:
    """Grade, then grade again whenever a lab file changes, with everything preloaded: until Ctrl-C."""
    from rich.text import Text
    from parent import report
    from parent.grade import grade_submissions
    out = report.console()

    def stamp():
        seen = []
        for name in LAB_FILES:
            try:
                info = (source / name).stat()
                seen.append((info.st_mtime_ns, info.st_size))
            except OSError:
                seen.append(None)
        return seen
    last = None
    try:
        while True:
            now = stamp()
            if now == last:
                time.sleep(0.1)
                continue
            time.sleep(0.05)  # an editor may still be writing: wait until the files are still
            if stamp() != now:
                continue
            last, started = now, time.monotonic()
            results = grade_submissions([(None, source, display)], labs, args, device, hide=hide)[None]
            if out.is_terminal:
                out.clear()
            report.print_scorecard(results, out, args.hints, args.verbose, display, time.monotonic() - started)
            out.print(Text(f"watching {display} for changes (Ctrl-C to stop)", style="dim"))
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 0


def merge_main(argv) -> int:
    """`grader.py merge OUT PART.csv...`: shards' gradebooks (--batch --shard I/N) joined into one."""
    p = argparse.ArgumentParser(prog="grader.py merge", description="Join the gradebooks of a batch's shards.")
    p.add_argument("out", metavar="OUT", help="the gradebook to write (a CSV; its checks file and report beside it)")
    p.add_argument("parts", nargs="+", metavar="PART", help="the shards' CSVs (each with its checks file beside it)")
    p.add_argument("--canvas", metavar="PATH", help="also write the grades as Canvas imports them")
    args = p.parse_args(argv)
    from parent.batch import merge
    return merge(args.out, args.parts, args)


def report_main(argv) -> int:
    """`grader.py report grades.csv [--html PATH] [--canvas PATH]`: the class report (needs no torch)."""
    p = argparse.ArgumentParser(prog="grader.py report",
                                description="Write a class report (one self-contained HTML page) from a batch.")
    p.add_argument("csv", metavar="CSV", help="a batch's grades.csv (and the .checks.json beside it, if any)")
    p.add_argument("--html", metavar="PATH", help="where to write the page (default: beside the CSV, "
                                                  "grades.csv -> grades.report.html)")
    p.add_argument("--canvas", metavar="PATH", help="also write the grades as Canvas imports them")
    opts = p.parse_args(argv)
    from parent.classreport import run
    code = run(opts.csv, opts.html)
    if code == 0 and opts.canvas:
        from parent import gradebook
        from parent.report import write_atomic
        try:
            write_atomic(opts.canvas, gradebook.canvas_text(gradebook.load(opts.csv)))
        except (gradebook.GradebookError, OSError) as exc:
            print(f"grader.py report: error: {exc}", file=sys.stderr)
            return 2
    return code


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args = parse_args(argv)
    missing = missing_package()
    if missing:
        print(f"grader.py: error: the package {missing!r} is not installed for {sys.executable}.\n"
              f"Set up once (README, For students):\n    {SETUP}\nthen run the grader again with that environment's "
              "python (`python grader.py ...` once it is activated).", file=sys.stderr)
        return 2
    labs = args.labs
    hide = ()
    if args.gradescope:
        autograder = Path(os.environ.get("GRADESCOPE_ROOT", "/autograder"))
        hide = (str(autograder.resolve()),)  # its results folder included
        args.submission = str(autograder / "submission")  # or the folder inside it that holds the lab files (below)
        args.json = str(autograder / "results" / "results.json")
    # the folders results go to: a worker's process must not even see them
    hide += tuple(str(Path(f).resolve().parent) for f in (args.json, args.csv if args.batch else None) if f)
    hide += tuple(str(Path(f).resolve()) for f in args.hide)  # --hide: the instructor's own
    source = ROOT / "solutions" if args.solutions else Path(args.submission) if args.submission else ROOT / "labs"
    if args.docker:
        from parent.container import run_in_docker
        return run_in_docker(args, labs, source, resolve_device(args.device))
    started, results, error = time.monotonic(), [], None
    display = str(source)
    try:  # from here on, whatever happens, --json (Gradescope's results.json) is written below
        from parent.verdict import clean_name
        display = clean_name(os.path.relpath(source) if not os.path.relpath(source).startswith("..") else source)
        device = resolve_device(args.device)
        from parent.grade import grade_submissions, preload, warn_if_unconfined
        if args.batch or args.gradescope:
            warn_if_unconfined(args.isolation)
        preload(args.isolation, labs)  # first: the zygote must fork before any checker is imported
        from parent import report
        from parent.verdict import expected_checks
        if args.check:
            labs = [lab for lab in labs if expected_checks(lab, args.check)]
            if not labs:
                print(f"grader.py: error: no check matches {args.check}", file=sys.stderr)
                return 2
        if args.batch:
            from parent.batch import run_batch
            return run_batch(args.batch, labs, args, device, hide)
        if args.watch:
            return watch(Path(source), labs, args, device, display, hide)
        results = grade_submissions([(None, source, display)], labs, args, device, hide=hide)[None]
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
        if args.json and not args.batch:
            from parent.report import write_json
            write_json(args.json, results, time.monotonic() - started, error, args.visibility, args.hidden_visibility)
    return 0 if results and not error and all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
