"""What a worker can see and write: every world-writable folder of the machine is its own (or, under uid
confinement alone, cleaned of what its uid left there when it ends), and `--hide DIR` hides a folder.

The batch tests grade, with `--jobs 1`, a submission whose lab 1 leaves a correct lab 1 in every world-writable
folder it can reach, then a stub whose lab 1 runs such a file when it finds one: the stub must stay at 0. Each is
paired with a control run in which the defence is switched off, where the stub passes: the attack is real."""
import csv
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import PY, ROOT, WITHOUT_SCAN, run_grader, submission
from worker import zygote

pytestmark = pytest.mark.skipif(not zygote.confinement(), reason="workers cannot be confined here")

ROOT_USER = os.geteuid() == 0
SOLUTION1 = (ROOT / "solutions" / "lab1_attention.py").read_text()
STUB1 = (ROOT / "labs" / "lab1_attention.py").read_text()
L1_IMPORT = "import torch\n"

PLANT = '''
import os as _os
for _d in %(targets)r:
    try:
        with open(_os.path.join(_d, %(name)r), "w") as _f:
            _f.write(%(code)r)
        _os.chmod(_os.path.join(_d, %(name)r), 0o644)
    except OSError:
        pass
'''
SEEK = '''
import os as _os
for _d in %(targets)r:
    try:
        _src = open(_os.path.join(_d, %(name)r)).read()
    except OSError:
        continue
    exec(compile(_src, "found", "exec"), globals())
    break
'''


def mount_namespaces() -> bool:
    """Whether a worker here gets a mount namespace (as the zygote asks for one)."""
    pid = os.fork()
    if pid == 0:
        flags = zygote.CLONE_NEWNS | zygote.CLONE_NEWPID | (0 if ROOT_USER else zygote.CLONE_NEWUSER)
        os._exit(0 if zygote._unshare(flags) else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ---- finding the world-writable folders ---------------------------------------------------------------------------
def make_tree(base: Path) -> dict:
    """Folders of every kind under base; returns {what: path}."""
    paths = {"sticky": base / "a" / "sticky", "open": base / "open", "deep": base / "d" / "e" / "open3",
             "inner": base / "open" / "inner", "beyond": base / "x" / "y" / "z" / "w", "closed": base / "closed"}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    for what, mode in (("sticky", 0o1777), ("open", 0o777), ("deep", 0o777), ("inner", 0o777), ("beyond", 0o777),
                       ("closed", 0o755)):
        paths[what].chmod(mode)
    os.symlink(paths["open"], base / "link")
    return paths


def expect_found(found: list, paths: dict):
    assert str(paths["sticky"]) in found and str(paths["open"]) in found and str(paths["deep"]) in found, found
    assert str(paths["inner"]) not in found, "a folder inside one found goes with it"
    assert str(paths["beyond"]) not in found and str(paths["closed"]) not in found, found
    assert not any(p.endswith("/link") for p in found), "links are not followed"


def discover(base):
    return zygote._world_writable(str(base), depth=3, extra=())


def test_discovery_finds_every_world_writable_folder(tmp_path):
    paths = make_tree(tmp_path)
    expect_found(discover(tmp_path), paths)


def test_the_discovery_test_fails_a_fixed_list_or_sticky_only(tmp_path, monkeypatch):
    paths = make_tree(tmp_path)
    with pytest.raises(AssertionError):  # the folders a fixed list names (as before)
        expect_found([p for p in zygote.PRIVATE_DIRS if os.path.isdir(p)], paths)
    monkeypatch.setattr(zygote.stat, "S_IWOTH", stat.S_ISVTX)  # only sticky folders
    with pytest.raises(AssertionError):
        expect_found(discover(tmp_path), paths)


def test_the_machines_own_are_found_and_the_search_is_bounded():
    found = zygote._world_writable()
    assert "/tmp" in found and not any(p.startswith(("/proc/", "/sys/")) for p in found), found
    if os.path.isdir("/run/lock") and os.stat("/run/lock").st_mode & stat.S_IWOTH:
        assert "/run/lock" in found or "/run" in found, found
    assert len(zygote._world_writable(count=3, extra=())) <= 3


# ---- making them private ------------------------------------------------------------------------------------------
def test_found_folders_are_private_and_one_holding_the_interpreter_read_only():
    if not mount_namespaces():
        pytest.skip("no mount namespace here")
    base = Path(tempfile.mkdtemp(prefix="labgrade-view-", dir="/var" if ROOT_USER else None))
    lab_dir = tempfile.mkdtemp(prefix="labgrade-")
    try:
        plain, holding = base / "plain", base / "holding"
        for folder in (plain, holding):
            folder.mkdir()
            folder.chmod(0o1777)
            (folder / "left.py").write_text("x")
        (holding / "venv").mkdir()
        pid = os.fork()
        if pid == 0:  # as a worker does: its own mount namespace first
            code = 99
            try:
                zygote._unshare(zygote.CLONE_NEWNS | (0 if ROOT_USER else zygote.CLONE_NEWUSER))
                zygote._mount(None, "/", None, zygote.MS_REC | zygote.MS_PRIVATE)
                zygote.SHARED[:] = [str(plain), str(holding)]
                zygote._private_dirs(lab_dir, [str(holding / "venv")])
                code = 0 if os.listdir(plain) == [] else 10
                (plain / "mine").write_text("y")
                code += 0 if (holding / "left.py").read_text() == "x" and (holding / "venv").is_dir() else 20
                try:
                    (holding / "new").write_text("z")
                    code += 40
                except OSError:
                    pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, "10: not emptied, 20: the interpreter's folder covered, 40: writable"
        assert sorted(p.name for p in plain.iterdir()) == ["left.py"] and not (holding / "new").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(lab_dir, ignore_errors=True)


# ---- cleaning after a uid ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not ROOT_USER, reason="workers get a uid of their own only when the grader runs as root")
def test_what_a_uid_left_in_a_world_writable_folder_is_removed():
    uid, lock = zygote._claim_uid(set())
    other, other_lock = zygote._claim_uid({uid})
    assert uid is not None and other is not None
    base = Path(tempfile.mkdtemp(prefix="labgrade-clean-"))
    try:
        base.chmod(0o755)
        shared = base / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        outside = base / "outside.txt"
        outside.write_text("root's")

        def made(path, owner, folder=False, mode=None):
            path.mkdir() if folder else path.write_text("x")
            os.chown(path, owner, owner, follow_symlinks=False)
            if mode is not None:
                path.chmod(mode)
            return path
        theirs = [made(shared / "code.py", uid), made(shared / "tree", uid, folder=True)]
        made(shared / "tree" / "in.py", uid)
        made(shared / "tree" / "sub", uid, folder=True)
        made(shared / "tree" / "sub" / "deeper.py", uid)
        (shared / "tree" / "sub").chmod(0)  # closed to itself
        link = shared / "link"
        os.symlink(outside, link)
        os.chown(link, uid, uid, follow_symlinks=False)
        theirs.append(link)
        common = made(shared / "common", 0, folder=True, mode=0o777)
        theirs.append(made(common / "left.py", uid))
        spare = made(shared / "labgrade-own", uid, folder=True)
        kept = [made(shared / "classmate.py", other), made(shared / "roots.py", 0), common, spare, outside]
        pid = os.fork()
        if pid == 0:  # as the zygote does it: in a child become the uid
            try:
                os.setgid(uid)
                os.setuid(uid)
                os._exit(0 if zygote._clean(uid, [str(shared)], spare=[str(spare)]) == 7 else 3)
            finally:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        left = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
        assert os.WEXITSTATUS(status) == 0, left
        assert not any(os.path.lexists(p) for p in theirs), left
        assert all(p.exists() for p in kept) and outside.read_text() == "root's", left
    finally:
        shutil.rmtree(base, ignore_errors=True)
        os.close(lock)
        os.close(other_lock)


# ---- one worker leaves code, the next looks for it -------------------------------------------------------------------
def targets(extra=()) -> list:
    """World-writable folders on this machine besides /tmp, and /tmp."""
    found = [p for p in ("/run/lock", "/var/lock", "/var/tmp", "/dev/shm", "/var/crash", "/var/mail")
             if os.path.isdir(p) and os.stat(p).st_mode & stat.S_IWOTH]
    return [*extra, *found, "/tmp"]


@pytest.fixture(scope="module")
def shared_folder():
    """A world-writable folder of the test's own outside every usual place (the search must find it), or None."""
    if not ROOT_USER:
        yield None
        return
    path = Path("/var") / f"labgrade-test-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def plant_and_seek(base: Path, shared_folder, honest=True):
    subs = base / "submissions"
    name = f"labgrade-planted-{secrets.token_hex(4)}.py"
    where = targets([str(shared_folder)] if shared_folder else [])
    values = {"targets": where, "name": name, "code": SOLUTION1}
    if honest:
        for who in ("alice", "bob"):
            submission(subs / who, "lab1")
    submission(subs / "mallory", "lab1", [(L1_IMPORT, L1_IMPORT + PLANT % values)])
    submission(subs / "trudy", "lab1", source=STUB1 + SEEK % values)  # graded after mallory (--jobs 1)
    return subs, where, name


def grade_batch(subs: Path, csv_path: Path, patch: str = "") -> dict:
    """`grader.py lab1 --batch subs --jobs 1` in a process that first runs `patch` (with the zygote's module as z),
    the static scan off (helpers.WITHOUT_SCAN: what is tested is the worker's view, not the scan)."""
    code = (f"import sys; from worker import zygote as z\n{WITHOUT_SCAN}\n{patch}\n"
            "import grader; sys.exit(grader.main(sys.argv[1:]))")
    proc = subprocess.run([PY, "-c", code, "lab1", "--batch", str(subs), "--csv", str(csv_path), "--jobs", "1",
                           "--timeout", "30"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(csv_path, newline="") as f:
        return {r["submission"]: r for r in csv.DictReader(f)}


def remove_planted(where, name):
    for folder in where:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


MODES = {"namespaces": "", "uid": "z._unshare = lambda flags: False"}  # uid: as in an image without CAP_SYS_ADMIN
CONTROLS = {"namespaces": "z._world_writable = lambda *a, **k: []",  # only the fixed /tmp, /var/tmp, /dev/shm
            "uid": "z._unshare = lambda flags: False\nz._clean = lambda *a, **k: 0"}


def skip_unless(mode):
    if mode == "namespaces" and not mount_namespaces():
        pytest.skip("no mount namespace for workers here")
    if mode == "uid" and not ROOT_USER:
        pytest.skip("uid confinement needs the grader to run as root")


@pytest.mark.parametrize("mode", MODES)
def test_code_left_by_one_worker_is_gone_for_the_next(tmp_path, shared_folder, mode):
    skip_unless(mode)
    subs, where, name = plant_and_seek(tmp_path, shared_folder)
    try:
        graded = grade_batch(subs, tmp_path / "grades.csv", MODES[mode])
        left = [f for f in where if os.path.lexists(os.path.join(f, name))]
    finally:
        remove_planted(where, name)
    assert graded["trudy"]["lab1_score"] == "0", graded["trudy"]
    for who in ("alice", "bob", "mallory"):
        assert graded[who]["total"] == graded[who]["max_total"] != "0", graded[who]
    assert left == [], f"left on the machine after the batch: {left}"


@pytest.mark.parametrize("mode", MODES)
def test_the_attack_works_without_the_defence(tmp_path, shared_folder, mode):
    skip_unless(mode)
    if mode == "namespaces" and shared_folder is None and not any(t not in zygote.PRIVATE_DIRS for t in targets()[:-1]):
        pytest.skip("no world-writable folder here beyond /tmp, /var/tmp and /dev/shm")
    subs, where, name = plant_and_seek(tmp_path, shared_folder, honest=False)
    try:
        graded = grade_batch(subs, tmp_path / "grades.csv", CONTROLS[mode])
    finally:
        remove_planted(where, name)
    assert graded["trudy"]["lab1_score"] == graded["trudy"]["max_total"] != "0", graded["trudy"]


# ---- --hide ---------------------------------------------------------------------------------------------------------
READ = '''
try:
    exec(compile(open(%(path)r).read(), "found", "exec"), globals())
except OSError:
    pass
'''


def readable_place():
    """A folder of the test's own that a worker could read and nothing hides already, or None."""
    for parent in ("/var", f"/run/user/{os.getuid()}"):
        try:
            path = Path(tempfile.mkdtemp(prefix="labgrade-hide-", dir=parent))
        except OSError:
            continue
        path.chmod(0o755)
        return path
    return None


def test_hide_hides_a_folder(tmp_path):
    if not mount_namespaces():
        pytest.skip("--hide needs a mount namespace for workers")
    secret = readable_place()
    if secret is None:
        pytest.skip("no folder outside the private and hidden ones to write here")
    try:
        (secret / "answers.py").write_text(SOLUTION1)
        (secret / "answers.py").chmod(0o644)
        folder = submission(tmp_path / "sub", "lab1", source=STUB1 + READ % {"path": str(secret / "answers.py")})
        scores = {}
        for label, extra in (("seen", []), ("hidden", ["--hide", str(secret)])):
            out = tmp_path / f"{label}.json"
            run_grader("lab1", "--submission", folder, "--json", out, *extra, timeout=300, patch=WITHOUT_SCAN)
            import json
            scores[label] = json.loads(out.read_text())["score"]
    finally:
        shutil.rmtree(secret, ignore_errors=True)
    assert scores["seen"] > 0 and scores["hidden"] == 0, scores


def test_hide_must_name_something(tmp_path):
    proc = run_grader("lab1", "--solutions", "--hide", tmp_path / "nothing")
    assert proc.returncode == 2 and "--hide" in proc.stderr


# ---- System V IPC: shared memory one worker leaves for the next -------------------------------------------------
SHM = '''
import ctypes as _c
_l = _c.CDLL(None, use_errno=True)
_l.shmget.argtypes, _l.shmat.argtypes = (_c.c_int, _c.c_size_t, _c.c_int), (_c.c_int, _c.c_void_p, _c.c_int)
_l.shmat.restype = _c.c_void_p
'''
SHM_PLANT = SHM + '''
_data = %(code)r.encode()
_id = _l.shmget(%(key)d, len(_data) + 8, 0o1000 | 0o644)  # IPC_CREAT, readable by anybody
if _id >= 0:
    _p = _l.shmat(_id, None, 0)
    if _p and _p != _c.c_void_p(-1).value:
        _c.memmove(_p, str(len(_data)).zfill(8).encode() + _data, len(_data) + 8)
'''
SHM_SEEK = SHM + '''
_id = _l.shmget(%(key)d, 0, 0)
if _id >= 0:
    _p = _l.shmat(_id, None, 0o10000)  # SHM_RDONLY
    if _p and _p != _c.c_void_p(-1).value:
        exec(compile(_c.string_at(_p + 8, int(_c.string_at(_p, 8))).decode(), "found", "exec"), globals())
'''
# each defence alone: the IPC namespace (its cleaning switched off), or, without namespaces, the cleaning
IPC_MODES = {"namespaces": "z._clean_ipc = lambda *a: 0", "uid": "z._unshare = lambda flags: False"}
IPC_CONTROLS = {"namespaces": "z._clean_ipc = lambda *a: 0\nz.CLONE_NEWIPC = 0",
                "uid": "z._unshare = lambda flags: False\nz._clean_ipc = lambda *a: 0"}


def remove_segment(key: int):
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)
    lib.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    found = lib.shmget(key, 0, 0)
    if found >= 0:
        lib.shmctl(found, 0, None)  # IPC_RMID


@pytest.mark.parametrize("defended", [True, False])
@pytest.mark.parametrize("mode", IPC_MODES)
def test_shared_memory_left_by_one_worker_is_gone_for_the_next(tmp_path, mode, defended):
    skip_unless(mode)
    key = 0x4C000000 + secrets.randbelow(1 << 20)
    subs = tmp_path / "submissions"
    values = {"key": key, "code": SOLUTION1}
    submission(subs / "mallory", "lab1", [(L1_IMPORT, L1_IMPORT + SHM_PLANT % values)])
    submission(subs / "trudy", "lab1", source=STUB1 + SHM_SEEK % values)  # graded after mallory (--jobs 1)
    try:
        graded = grade_batch(subs, tmp_path / "grades.csv", (IPC_MODES if defended else IPC_CONTROLS)[mode])
    finally:
        remove_segment(key)
    assert graded["mallory"]["total"] == graded["mallory"]["max_total"] != "0", graded["mallory"]
    if defended:
        assert graded["trudy"]["lab1_score"] == "0", graded["trudy"]
    else:  # the control: with the defence off, the attack works
        assert graded["trudy"]["lab1_score"] == graded["trudy"]["max_total"] != "0", graded["trudy"]
