"""`grader.py --docker`: the same grading inside the grading image, with the hardening flags."""
import os
import shlex
from pathlib import Path


def docker_command(args, labs_arg: str, source: Path, device: str) -> list:
    """The `docker run` command that grades `source` inside the image (student files mounted read-only)."""
    memory = f"{int(args.memory * args.jobs + 2)}g" if args.memory else "8g"  # the children's caps, plus headroom
    cmd = ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,exec,nosuid,size=1g",
           "--user", "65534:65534", "-e", "HOME=/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--pids-limit", "256", "--memory", memory, "--memory-swap", memory]
    if device != "cpu":
        cmd += ["--gpus", "all"]
    inner = [labs_arg, "--device", device, "--timeout", f"{args.timeout:g}", "--memory", f"{args.memory:g}",
             "--jobs", str(args.jobs)]
    if args.solutions:
        inner += ["--solutions"]  # needs an image built with --build-arg WITH_SOLUTIONS=1
    else:
        cmd += ["-v", f"{source.resolve()}:/submission:ro"]
        inner += ["--submission", "/submission"]
    if args.json:
        out = Path(args.json).resolve()
        cmd += ["-v", f"{out.parent}:/results"]
        inner += ["--json", f"/results/{out.name}"]
    for name in args.check or []:
        inner += ["--check", name]
    return cmd + [args.image] + inner


def run_in_docker(args, labs_arg, source, device) -> int:
    cmd = docker_command(args, labs_arg, source, device)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    os.execvp(cmd[0], cmd)  # the container's exit code becomes ours
