"""The grading image, checked offline: hadolint, a parse of the Dockerfile, and `--docker --dry-run`."""
import json
import os
import re
import shlex
import shutil
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


def shell_words(line: str) -> list:
    """A shell line's words, with its operators ( ) ; && as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def dry_run(tmp_path, *extra):
    """`--docker --dry-run --json tmp_path/out/results.json`: (process, the printed line's words, the docker command's
    words, the fresh folder it mounts for the results). The fresh folder is removed when the test ends."""
    proc = run_grader("lab2", "--docker", "--dry-run", "--submission", ROOT / "labs", "--device", "cpu",
                      "--json", tmp_path / "out" / "results.json", *extra)
    assert proc.returncode == 0, proc.stderr
    words = shell_words(proc.stdout.strip())
    docker = words[words.index("docker"):words.index(";")]
    (fresh,) = [Path(v.rsplit(":", 1)[0]) for k, v in zip(docker, docker[1:])
                if k == "-v" and v.endswith(":/private/results")]
    return proc, words, docker, fresh


@pytest.fixture
def fresh_folders():
    made = []
    yield made
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def test_docker_dry_run_prints_the_hardened_command(tmp_path, fresh_folders):
    """The dry run prints one pasteable line and runs nothing: the one thing it makes is the empty fresh folder that
    the line mounts for the results (never the folder of --json)."""
    proc, words, cmd, fresh = dry_run(tmp_path)
    fresh_folders.append(fresh)
    line = proc.stdout.strip()
    assert "\n" not in line and words[0] == "(" and words[-1] == ")"
    assert cmd[:3] == ["docker", "run", "--rm"]
    for flag in HARDENING:
        assert flag in line, flag
    assert f"{ROOT / 'labs'}:/private/submission:ro" in cmd and "--gpus" not in cmd and "--user" not in cmd
    assert not [arg for arg in cmd if str(tmp_path) in arg]  # never the folder of --json: a fresh one
    out = (tmp_path / "out").resolve()
    assert fresh.is_dir() and not list(fresh.iterdir()) and fresh != out and out not in fresh.parents \
        and fresh not in out.parents
    image = cmd.index("transformer-labs-grader:latest")
    assert cmd[image + 1:image + 2] == ["lab2"] and cmd[-2:] == ["--json", "/private/results/results.json"]
    assert not (tmp_path / "out").exists()  # a dry run runs nothing


def test_docker_dry_run_line_can_be_pasted(tmp_path, fresh_folders):
    """Every path in the printed line exists, or is the --json destination (or its folder, which the line makes),
    or is results.json in the fresh folder (which the container writes); the line is valid shell."""
    proc, words, cmd, fresh = dry_run(tmp_path, "--check", "causal mask")
    fresh_folders.append(fresh)
    line = proc.stdout.strip()
    assert subprocess.run(["bash", "-n", "-c", line]).returncode == 0
    dest = tmp_path / "out" / "results.json"
    after = words[words.index(";"):]
    assert after[:3] == [";", "code=$?", ";"] and after[-4:] == [";", "exit", "$code", ")"]
    assert after[3:10] == ["mkdir", "-p", str(dest.parent), "&&", "cp", str(fresh / "results.json"), str(dest)]
    paths = [v.split(":/private/")[0] for k, v in zip(cmd, cmd[1:]) if k == "-v"] + after[5:6] + after[8:10]
    assert len(paths) == 5 and all(Path(p).is_absolute() for p in paths)
    for path in map(Path, paths):
        assert path.exists() or path in (dest, dest.parent) or path == fresh / "results.json", path
    # the two mounts are the only host paths docker is given (--tmpfs /tmp is the container's own)
    assert sorted(k for k, v in zip(cmd, cmd[1:]) if v.startswith("/") and not v.startswith("/private/")) == \
        ["--tmpfs", "-v", "-v"]


FAKE_DOCKER = """#!/bin/sh
# a stand-in for docker: writes results.json into the folder mounted at /private/results, says MESSAGE, exits CODE
for arg; do
    case "$arg" in *:/private/results) dir="${arg%:/private/results}" ;; esac
done
if [ -n "$dir" ] && [ CODE -lt 125 ]; then echo '{"score": 7}' > "$dir/results.json"; fi
[ -z "MESSAGE" ] || echo "MESSAGE" >&2
exit CODE
"""
DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


def fake_docker(folder: Path, code: int, message: str = "") -> dict:
    """An environment whose PATH finds only a fake docker exiting `code` (None: no docker at all)."""
    folder.mkdir()
    if code is not None:
        (folder / "docker").write_text(FAKE_DOCKER.replace("CODE", str(code)).replace("MESSAGE", message))
        (folder / "docker").chmod(0o755)
    return {"PATH": str(folder)}


@pytest.mark.parametrize("code, message, exit_code, says", [
    (None, "", 2, "docker is not installed or not on PATH"),
    (125, DAEMON, 2, "docker exit code 125"),
    (126, "", 2, "docker exit code 126"),
    (127, "", 2, "docker exit code 127"),
    (137, "", 2, "the container was killed"),
    (1, "", 1, None),
    (0, "", 0, None),
], ids=["no docker", "125 daemon", "126", "127", "137 killed", "1 a check failed", "0 every check passed"])
def test_docker_failures_exit_2_with_one_line(tmp_path, code, message, exit_code, says):
    out = tmp_path / "out" / "results.json"
    proc = run_grader("lab1", "--docker", "--submission", ROOT / "labs", "--device", "cpu", "--json", out,
                      env=fake_docker(tmp_path / "bin", code, message))
    assert proc.returncode == exit_code, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("grader.py:")]
    if says is None:
        assert ours == [] and json.loads(out.read_text()) == {"score": 7}  # the grader's results, copied to --json
    else:
        assert len(ours) == 1 and says in ours[0], proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()
    if message:
        assert message in proc.stderr  # docker's own words stay in view, above ours
    if code is not None and code >= 125:
        assert str(code) in ours[0]


def test_the_dry_run_line_runs_as_printed(tmp_path, fresh_folders):
    """Pasted into a shell with a (fake) docker that writes results.json and exits 1 (a check failed): the results
    land at --json all the same and the line's status is the grader's."""
    proc, _, _, fresh = dry_run(tmp_path)
    fresh_folders.append(fresh)
    env = {**os.environ, **fake_docker(tmp_path / "bin", 1)}
    env["PATH"] += os.pathsep + "/usr/bin" + os.pathsep + "/bin"  # mkdir and cp
    pasted = subprocess.run(["bash", "-c", proc.stdout.strip()], env=env, capture_output=True, text=True, timeout=60)
    assert pasted.returncode == 1, pasted.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == {"score": 7}


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
