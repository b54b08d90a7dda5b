"""`grader.py --docker`: the same grading inside the grading image, with the hardening flags.

Inside the container the grader runs as root with only the capabilities it needs to confine workers: each worker
gets an unprivileged uid of its own (CHOWN for its private copy, SETUID/SETGID to become it, KILL and
DAC_OVERRIDE to end and clean up after it). What a worker must not see lives under /private (mode 0700): the
submission, the results, and the pack itself is readable by root only.
"""
import shlex
import shutil
import subprocess
import sys
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

    `results` (needed with --json) is a fresh, empty folder for results.json: the container never sees the folder
    of `--json`."""
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
        if results is None:
            raise ValueError("--json needs a fresh folder to mount for the results")
        cmd += ["-v", f"{Path(results).resolve()}:{PRIVATE}/results"]
        inner += ["--json", f"{PRIVATE}/results/results.json"]
    for name in args.check or []:
        inner += ["--check", name]
    if getattr(args, "own_labs", False):
        inner += ["--own-labs"]
    return cmd + [args.image] + inner


# docker's own exit codes (`docker run` reference), as against the grader's own 0, 1 and 2 from inside the image
DOCKER_FAILURES = {
    125: "docker could not run the container (is the docker daemon running, and the image built?)",
    126: "docker could not invoke the image's command",
    127: "docker could not find the image's command",
    137: "the container was killed (SIGKILL: out of memory under --memory, or docker kill)",
}


def dry_run_line(args, labs, source, device, results: Path) -> str:
    """The command a dry run prints: one line of shell that can be pasted as it is. With --json it mounts
    `results` (a fresh folder) and then copies results.json from it to --json, in a subshell that ends with the
    grader's exit code; the results are copied whatever that code is (1 means a check failed, results.json is
    written all the same)."""
    docker = shlex.join(docker_command(args, labs, source, device, results))
    if not args.json:
        return docker
    out = Path(args.json).absolute()
    copy = f"mkdir -p {shlex.quote(str(out.parent))} && cp {shlex.quote(str(Path(results) / 'results.json'))} " \
           f"{shlex.quote(str(out))}"
    return f"( {docker}; code=$?; {copy}; exit $code )"


def run_in_docker(args, labs, source, device) -> int:
    """Grade in the image. Exit code: the grader's own 0 or 1 (or its 2), and 2 with one line on stderr when docker
    itself fails (not installed, its daemon unreachable, the container killed ...).

    A dry run prints the command and runs nothing; with --json it creates the empty fresh folder the printed
    command mounts (left in place for the command to use)."""
    results = Path(tempfile.mkdtemp(prefix="labgrade-results-")) if args.json else None
    if args.dry_run:
        print(dry_run_line(args, labs, source, device, results))
        return 0
    try:
        try:
            code = subprocess.call(docker_command(args, labs, source, device, results))
        except FileNotFoundError:
            print("grader.py: error: docker is not installed or not on PATH", file=sys.stderr)
            return 2
        except OSError as exc:  # a docker that cannot be executed (permissions, a broken file)
            print(f"grader.py: error: docker could not be started ({exc.strerror or exc})", file=sys.stderr)
            return 2
        produced = results / "results.json" if results else None
        if produced and produced.is_file() and not produced.is_symlink():
            from parent.report import write_atomic
            write_atomic(args.json, produced.read_text(encoding="utf-8", errors="replace")[:16 << 20])
        if code in (0, 1, 2):  # the grader's own (2: it refused its arguments, and said why)
            return code
        reason = DOCKER_FAILURES.get(code, "docker or the container failed")
        print(f"grader.py: error: {reason} (docker exit code {code})", file=sys.stderr)
        return 2
    finally:
        if results:
            shutil.rmtree(results, ignore_errors=True)
