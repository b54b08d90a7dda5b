"""The grading image, checked offline: hadolint, a parse of the Dockerfile, and `--docker --dry-run`."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.helpers import ROOT, run_grader

BASE = re.compile(r"^pytorch/pytorch:(?P<torch>[\d.]+)-cuda\d+\.\d+-cudnn9-runtime@sha256:[0-9a-f]{64}$")
HARDENING = ["--network none", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges", "--pids-limit",
             "--memory", "--memory-swap", "--cap-add SETUID", "--cap-add SETGID", "--tmpfs /tmp"]


def dockerfile_problems(text: str) -> list:
    """What would make the image wrong: base image, torch version, reinstalled torch, root user, entry point."""
    parser = DockerfileParser(fileobj=__import__("io").BytesIO(text.encode()))
    steps = [(i["instruction"], i["value"]) for i in parser.structure]
    problems = []
    froms = [v.split()[0] for k, v in steps if k == "FROM"]
    pinned = (ROOT / "requirements.txt").read_text().split("torch==")[1].split()[0]
    base = BASE.match(froms[0]) if froms else None
    if not base:
        problems.append(f"base image {froms[:1]} is not a digest-pinned pytorch/pytorch:<ver>-cuda<X.Y>-cudnn9-runtime")
    elif base["torch"] != pinned:
        problems.append(f"base image has torch {base['torch']}, requirements.txt pins {pinned}")
    if any(k == "RUN" and re.search(r"pip install[^\n]*\btorch\b", v) for k, v in steps):
        problems.append("torch is reinstalled over the image's")
    users = [v.strip() for k, v in steps if k == "USER"]
    if users and users[-1].split(":")[0] not in ("root", "0"):
        problems.append("the grader does not run as root: workers cannot get uids of their own")
    final = [v for k, v in steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):] if k == "RUN"]
    if not any("chmod -R go-rwx /pack" in v and "mkdir -m 0700 /private" in v for v in final):
        problems.append("the pack or /private is readable by the workers' uids")
    entry = [v for k, v in steps if k == "ENTRYPOINT"]
    if not entry or "grader.py" not in entry[-1]:
        problems.append("grader.py is not the entry point")
    if not any(k == "COPY" and "grader.py" in v for k, v in steps):
        problems.append("grader.py is not copied into the image")
    solution_copies = [i for i, (k, v) in enumerate(steps) if k == "COPY" and "solutions" in v]
    stage_of = lambda i: [v for k, v in steps[:i] if k == "FROM"][-1]
    if any("pack-1" not in stage_of(i) for i in solution_copies):
        problems.append("solutions are copied outside the WITH_SOLUTIONS=1 stage")
    return problems


def test_dockerfile_is_right():
    assert dockerfile_problems((ROOT / "Dockerfile").read_text()) == []


@pytest.mark.parametrize("old, new", [
    ("pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtme"),
    ("pytorch/pytorch:2.13.0-", "pytorch/pytorch:2.12.0-"),
    ('ENTRYPOINT ["python"', 'USER 10001\nENTRYPOINT ["python"'),
    ("RUN chmod -R go-rwx /pack && ", "RUN "),
    ('ENTRYPOINT ["python", "/pack/grader.py"]', 'ENTRYPOINT ["python"]'),
    ("COPY labs/ labs/", "COPY labs/ labs/\nCOPY solutions/ solutions/"),
    ("&& rm /tmp/requirements-extra.txt", "&& pip install torch==2.13.0 && rm /tmp/requirements-extra.txt"),
])
def test_a_broken_dockerfile_is_caught(old, new):
    text = (ROOT / "Dockerfile").read_text()
    assert old in text
    assert dockerfile_problems(text.replace(old, new))


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_dry_run_prints_the_hardened_command(tmp_path):
    proc = run_grader("lab2", "--docker", "--dry-run", "--submission", ROOT / "labs", "--device", "cpu",
                      "--json", tmp_path / "out" / "results.json")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    cmd = shlex.split(line)
    assert cmd[:3] == ["docker", "run", "--rm"]
    for flag in HARDENING:
        assert flag in line, flag
    assert f"{ROOT / 'labs'}:/private/submission:ro" in cmd and "--gpus" not in cmd and "--user" not in cmd
    assert not [arg for arg in cmd if arg.startswith(str(tmp_path))]  # never the folder of --json: a fresh one
    image = cmd.index("transformer-labs-grader:latest")
    assert cmd[image + 1:image + 2] == ["lab2"] and cmd[-2:] == ["--json", "/private/results/results.json"]
    assert not (tmp_path / "out").exists()  # a dry run runs nothing


def test_docker_flags_are_checked():
    assert run_grader("lab1", "--dry-run").returncode == 2
    assert run_grader("lab1", "--docker", "--batch", ROOT / "labs").returncode == 2


def test_docker_passes_own_labs_on():
    line = run_grader("lab3", "--docker", "--dry-run", "--submission", ROOT / "labs", "--device", "cpu",
                      "--own-labs").stdout
    cmd = shlex.split(line)
    assert cmd[cmd.index("transformer-labs-grader:latest") + 1:][-1] == "--own-labs"
    plain = shlex.split(run_grader("lab3", "--docker", "--dry-run", "--submission", ROOT / "labs").stdout)
    assert "--own-labs" not in plain
