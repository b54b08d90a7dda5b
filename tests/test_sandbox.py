"""Batch and Gradescope as sandboxes: a hostile submission graded beside correct classmates (`--batch --jobs 2`)
changes none of their scores, none of the submissions, none of the results after the grader ends, and no file of
the pack. Each attack is one submission whose lab 1 runs it when imported (so every lab's worker runs it)."""
import csv
import hashlib
import json
import os
import time

import pytest

from tests.helpers import ROOT, TOTAL, run_grader, submission
from worker.zygote import confinement

# unconfined, these attacks would kill this machine's processes and overwrite the pack's files: never run them so
pytestmark = pytest.mark.skipif(not confinement(), reason="workers cannot be confined here (not root, no user namespaces)")

L1_IMPORT = "import torch\n"
STUB1 = (ROOT / "labs" / "lab1_attention.py").read_text()

# every lab file on the machine that is not a stub: classmates' copies (the grader's and the originals)
SEARCH = '''
import os
def _lab_files(name, roots):
    for top in roots:
        for folder, dirs, files in os.walk(top):
            if name in files:
                yield os.path.join(folder, name)
_ROOTS = ["/tmp", "/var/tmp", "/dev/shm", os.path.dirname(os.getcwd()), %(batch)r, %(root)r, "/root", "/home"]
'''
STEAL = SEARCH + '''
for _p in _lab_files("lab1_attention.py", _ROOTS):
    try:
        _src = open(_p).read()
    except OSError:
        continue
    if "NotImplementedError" not in _src:
        exec(compile(_src, "x", "exec"), globals())
        break
'''
VANDALISE = SEARCH + '''
for _name in ("lab1_attention.py", "lab2_multihead.py", "lab3_block.py", "lab4_gpt.py"):
    for _p in _lab_files(_name, _ROOTS):
        if os.path.realpath(_p).startswith(os.getcwd()):
            continue
        try:
            with open(_p, "w") as _f:
                _f.write("raise SystemExit(3)\\n")
        except OSError:
            pass
'''
KILL = '''
import os, signal
for _pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    if _pid != os.getpid():
        for _sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.kill(_pid, _sig)
            except OSError:
                pass
for _target in (lambda: os.kill(os.getppid(), signal.SIGINT), lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGINT)):
    try:
        _target()
    except OSError:
        pass
'''
# forged records and endless nesting into every pipe this process can find, its own and other processes'
FORGE = '''
import os, json
_junk = [b"[" * 100000 + b"\\n", (json.dumps({"type": "check", "name": "test_causal_mask", "outcome": "passed",
                                              "nonce": ""}) + "\\n").encode(), os.urandom(4096)]
_fds = ["/proc/self/fd/%d" % n for n in range(3, 64)]
for _pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        _fds += ["/proc/%s/fd/%s" % (_pid, fd) for fd in os.listdir("/proc/%s/fd" % _pid)]
    except OSError:
        pass
for _path in _fds:
    try:
        _fd = os.open(_path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        continue
    for _data in _junk:
        try:
            os.write(_fd, _data)
        except OSError:
            pass
    os.close(_fd)
print("[" * 100000)
'''
# a daemon that outlives the worker and keeps rewriting the results; poisoned bytecode for the pack's modules
AFTERMATH = '''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(40):
            for _path in %(results)r:
                try:
                    with open(_path, "w") as _f:
                        _f.write("submission,score\\nattacker,62\\n")
                except OSError:
                    pass
                try:
                    os.mkdir(_path + ".tmp")
                except OSError:
                    pass
            time.sleep(0.25)
        os._exit(0)
    os._exit(0)
for _folder, _module in (("judge", "checks"), ("checkers", "check_lab1"), ("judge", "client")):
    try:
        os.makedirs(%(root)r + "/%%s/__pycache__" %% _folder, exist_ok=True)
        with open(%(root)r + "/%%s/__pycache__/%%s.cpython-311.pyc" %% (_folder, _module), "wb") as _f:
            _f.write(b"poisoned")
    except OSError:
        pass
'''
CONTROL = '''
print("\\x1b[2J\\x1b]0;pwned\\x07 cleared your screen")
'''
FORMULA = '=HYPERLINK("evil.example","x")'


def snapshot(folder):
    """{path: sha256} of every file under folder (the pack's own virtual environment left out)."""
    out = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in (".venv", ".git", ".pytest_cache")]
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):  # the FIFO and the link: what they are is enough
                out[path] = os.readlink(path) if os.path.islink(path) else "special"
                continue
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def rows(path):
    with open(path, newline="") as f:
        return {r["submission"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    subs, out = base / "submissions", base / "out"
    out.mkdir()
    out.chmod(0o777)  # a careless results folder, writable by anybody: the grader must still own its CSV
    csv_path = out / "grades.csv"
    values = {"batch": str(subs), "root": str(ROOT), "results": [str(csv_path), str(out / "grades.csv.tmp")]}
    for name in ("alice", "bob"):
        submission(subs / name)
    attacks = {"steal": STUB1 + STEAL % values, "vandalise": VANDALISE % values, "kill": KILL, "forge": FORGE,
               "aftermath": AFTERMATH % values, "control\x1b[31m": CONTROL, FORMULA: ""}
    for name, code in attacks.items():
        if code.startswith(STUB1):
            submission(subs / name, "lab1", source=code)
        else:
            submission(subs / name, "lab1", [(L1_IMPORT, L1_IMPORT + code)])
    (subs / "fifo").mkdir()
    submission(subs / "links")
    (subs / "links" / "lab3_block.py").unlink()
    os.symlink("/dev/zero", subs / "links" / "lab3_block.py")
    os.mkfifo(subs / "fifo" / "lab1_attention.py")
    before, pack = snapshot(subs), snapshot(ROOT)
    proc = run_grader("all", "--batch", subs, "--csv", csv_path, "--jobs", "2", "--timeout", "20", timeout=600)
    ended = time.monotonic()
    first = csv_path.read_bytes()
    time.sleep(max(0.0, 5 - (time.monotonic() - ended)))
    return {"proc": proc, "first": first, "csv": csv_path, "subs": subs, "before": before, "pack": pack,
            "out": out}


def test_the_batch_finishes_with_every_row(batch):
    proc = batch["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    graded = rows(batch["csv"])
    assert len(graded) == len([p for p in batch["subs"].iterdir() if p.is_dir()]), sorted(graded)


def test_classmates_keep_their_exact_scores(batch):
    graded = rows(batch["csv"])
    for name in ("alice", "bob"):
        assert graded[name]["total"] == graded[name]["max_total"] == str(TOTAL), graded[name]


@pytest.mark.parametrize("attacker", ["steal", "vandalise", "kill", "forge", "aftermath"])
def test_an_attacker_gains_nothing(batch, attacker):
    graded = rows(batch["csv"])
    mine = graded[attacker]
    if attacker == "steal":  # a stub that ran a classmate's code would pass lab 1
        assert mine["lab1_score"] == "0" and mine["lab1_status"] in ("not started", "failed", "forbidden"), mine
    else:  # its own labs are correct: what it tried must not change its grade either way, nor anyone's
        assert mine["total"] == str(TOTAL), mine


def test_no_submission_was_changed(batch):
    assert snapshot(batch["subs"]) == batch["before"]


def test_the_results_are_the_graders_after_it_ends(batch):
    assert batch["csv"].read_bytes() == batch["first"]
    assert "attacker" not in batch["first"].decode()
    assert sorted(p.name for p in batch["out"].iterdir()) == ["grades.checks.json", "grades.csv", "grades.report.html"]


def test_no_file_of_the_pack_changed(batch):
    after = snapshot(ROOT)
    assert {p for p in after.keys() ^ batch["pack"].keys() if "/tests/" not in p} == set()
    assert {p for p in after if after[p] != batch["pack"].get(p) and "/tests/" not in p} == set()


def test_names_and_output_reach_the_csv_as_text(batch):
    text = batch["csv"].read_text()
    assert "\x1b" not in text and "\x07" not in text
    graded = rows(batch["csv"])
    assert "'" + FORMULA in graded and "control\\x1b[31m" in graded  # the name kept, its escape byte escaped
    assert graded["links"]["lab3_status"] == "error" and graded["fifo"]["lab1_status"] == "error"


def test_a_detached_process_cannot_rewrite_gradescope_results(tmp_path):
    autograder, source = tmp_path / "autograder", ROOT
    results = autograder / "results" / "results.json"
    code = AFTERMATH % {"results": [str(results)], "root": str(ROOT)}
    submission(autograder / "submission", "lab1", [(L1_IMPORT, L1_IMPORT + code),
                                                   ("scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)",
                                                    "scores = q @ k.transpose(-2, -1)")])
    (autograder / "results").mkdir()
    os.mkdir(str(results) + ".tmp")  # where an older grader put its temporary file
    proc = run_grader("lab1", "--gradescope", timeout=300, env={"GRADESCOPE_ROOT": str(autograder)}, cwd=source)
    written = results.read_bytes()
    time.sleep(5)
    assert results.read_bytes() == written, "results.json changed after the grader ended"
    data = json.loads(written)
    assert proc.returncode == 1 and 0 < data["score"] < 12, data["output"]


# four children of 1.5 GiB each under a 4 GiB cap: each process alone fits, together they do not
FORK_BOMB = '''
def causal_mask(T, device=None):
    import os, time
    held = 0
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                block = bytearray(3 << 29)  # 1.5 GiB, every page touched
                time.sleep(3)
                os._exit(0)
            except MemoryError:
                os._exit(1)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        held += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    raise RuntimeError("HELD %d" % held)
'''


def test_the_memory_cap_covers_every_process_of_a_worker(tmp_path):
    if not cgroups_writable():
        pytest.skip("no writable cgroup here: each process has the cap, and the uid a process limit")
    folder = submission(tmp_path / "forks", "lab1", source=STUB1.split("\ndef causal_mask")[0] + FORK_BOMB)
    run_grader("lab1", "-k", "causal_mask", "--submission", folder, "--memory", "4", "--json", tmp_path / "r.json")
    output = json.loads((tmp_path / "r.json").read_text())["tests"][0]["output"]
    held = int(output.split("HELD ")[1].split()[0]) if "HELD " in output else 0
    assert "HELD " in output and held * 1.5 <= 4, output  # at most two of the four at once


def cgroups_writable() -> bool:
    from worker.zygote import _cgroup, _rmdir
    made = _cgroup({"memory": 1, "device": "cpu"}, 0)
    for folder in made:
        _rmdir(folder)
    return any(f.startswith("/sys/fs/cgroup/memory/") for f in made)
