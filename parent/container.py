"""`grader.py --docker`: the same grading inside the grading image, with the hardening flags.

Inside the container the grader runs as root with only the capabilities it needs to confine workers: each worker
gets an unprivileged uid of its own (CHOWN for its private copy, SETUID/SETGID to become it, KILL and
DAC_OVERRIDE to end and clean up after it). What a worker must not see lives under /private (mode 0700): the
submission, the results, and the pack itself is readable by root only.
"""
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETUID", "SETGID")
PRIVATE = "/private"  # 0700 root in the image


def hardening(memory_gib: float, jobs: int) -> list:
    """`docker run` flags for grading untrusted code in the image (also the README's batch command)."""
    memory = f"{int(memory_gib * jobs + 2)}g" if memory_gib else "8g"  # the workers' caps, plus headroom
    cmd = ["--network", "none", "--read-only", "--tmpfs", "/tmp:rw,exec,nosuid,size=1g", "-e", "HOME=/tmp",
           "--cap-drop", "ALL"]
    for cap in CAPS:
        cmd += ["--cap-add", cap]
    return cmd + ["--security-opt", "no-new-privileges", "--pids-limit", "512", "--memory", memory,
                  "--memory-swap", memory]


def docker_command(args, labs: list, source: Path, device: str, results: Path = None) -> list:
    """The `docker run` command that grades `source` inside the image (student files mounted read-only).

    `results` is a fresh, empty folder for results.json: the container never sees the folder of `--json`."""
    cmd = ["docker", "run", "--rm", *hardening(args.memory, args.jobs)]
    if device != "cpu":
        cmd += ["--gpus", "all"]
    inner = [*labs, "--device", device, "--timeout", f"{args.timeout:g}", "--memory", f"{args.memory:g}",
             "--jobs", str(args.jobs)]
    if args.solutions:
        inner += ["--solutions"]  # needs an image built with --build-arg WITH_SOLUTIONS=1
    else:
        cmd += ["-v", f"{source.resolve()}:{PRIVATE}/submission:ro"]
        inner += ["--submission", f"{PRIVATE}/submission"]
    if args.json:
        cmd += ["-v", f"{results or '<fresh folder>'}:{PRIVATE}/results"]
        inner += ["--json", f"{PRIVATE}/results/results.json"]
    for name in args.check or []:
        inner += ["--check", name]
    if getattr(args, "own_labs", False):
        inner += ["--own-labs"]
    return cmd + [args.image] + inner


def run_in_docker(args, labs, source, device) -> int:
    if args.dry_run:
        print(shlex.join(docker_command(args, labs, source, device)))
        return 0
    results = Path(tempfile.mkdtemp(prefix="labgrade-results-")) if args.json else None
    try:
        code = subprocess.call(docker_command(args, labs, source, device, results))
        produced = results / "results.json" if results else None
        if produced and produced.is_file() and not produced.is_symlink():
            from parent.report import write_atomic
            write_atomic(args.json, produced.read_text(encoding="utf-8", errors="replace")[:16 << 20])
        return code
    finally:
        if results:
            shutil.rmtree(results, ignore_errors=True)

