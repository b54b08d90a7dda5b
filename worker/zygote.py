"""The zygote: a process holding torch and the worker code, and nothing of the grader, that forks workers.

The parent forks it right after importing torch (before any checker, oracle or expected value exists in its
memory), so a worker forked from it has nothing of the grader to read or call. A judge asks for a worker by
sending, over the zygote's socket, the datagram SPEC with a file holding its WorkerSpec and four pipe ends:
requests in, answers out, the worker's output, and a control pipe on which the zygote writes the worker's pid,
uid and the file counting its CPU time (`pid N UID FILE`, `-` for none) and, once it is gone, its wait status
(`exit STATUS`). A worker whose judge dies is killed; when every holder of the socket is gone, the zygote kills
its workers and exits.

A worker is confined as far as the machine allows: its own session, resource limits, a pid namespace with its
own /proc (what it starts dies with it, and it sees no process outside), a mount namespace in which the grader's
tree, the submissions' folders, the grader's home and the folders named with --hide are hidden and every
world-writable folder of the machine (/tmp, /var/tmp, /dev/shm, /run/lock, ...: found once, when the zygote
starts) is private, an IPC namespace, and, where the grader runs as root, an unprivileged uid of its own (one per
running worker) owning only its private copy of the lab files, whose every process is killed when the worker ends
and whose files in those world-writable folders (and System V IPC) are removed then (all a uid alone can do where
no namespace is allowed). A cgroup, where one is writable, caps the memory and the number of processes of the
worker and all it starts, gives them one CPU share together (the same for every worker) and counts their CPU time;
elsewhere each process has the address-space cap and the uid a process limit.
"""
import ctypes
import dataclasses
import fcntl
import os
import re
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time

from pack.paths import covering
from protocol.codec import ProtocolError, read_frame
from protocol.messages import SPEC, WorkerSpec

UIDS = range(61000, 61064)  # one per concurrently running worker, when running as root
UID_LOCKS = ("/run/labgrade-uids", "/tmp/labgrade-uids")  # a lock per uid in use: two graders never share one
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x10000000, 0x20000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # shared writable places: each worker gets empty ones
SHARED = []  # every world-writable folder of the machine (PRIVATE_DIRS among them): _world_writable(), at start
SCAN_DEPTH, SCAN_COUNT, SCAN_SECONDS = 4, 20000, 2.0  # bounds of that search: /a/b/c/d, folders looked at, time
NOT_SCANNED = ("/proc", "/sys")
CLEAN_DEPTH, CLEAN_COUNT = 8, 20000  # bounds of removing what a finished worker's uid left in SHARED
SYSTEM = {"/", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/dev", "/proc", "/sys", "/opt", "/var", "/run",
          *PRIVATE_DIRS}  # never hidden (the private ones are replaced instead)
MAX_TASKS = 128  # processes and threads of one worker (a cgroup's pids.max, else the uid's RLIMIT_NPROC)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
KEEP = []  # _keep(), worked out once in the zygote (it walks every loaded module)
POOL = {}  # (memory, device) -> cgroups a finished worker left empty, for the next one
DRAINING = []  # (caps, cgroups) of finished workers whose processes are not all reaped yet
_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> bool:
    return _libc.prctl(option, value, 0, 0, 0) == 0


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _mount(source, target, fstype, flags, data=None) -> bool:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    return _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def _write(path: str, text: str):
    with open(path, "w") as f:
        f.write(text)


def _hide(paths, keep):
    """In this (private) mount namespace, cover each path with an empty read-only tmpfs (files: /dev/null).

    A path that holds one of `keep` (the interpreter's own folders, say) is entered rather than covered.
    """
    for path in paths:
        path = os.path.normpath(path)
        if path in SYSTEM or not os.path.lexists(path) or any(path == k or path.startswith(k + "/") for k in keep):
            continue
        if any(k.startswith(path + "/") for k in keep):
            if os.path.isdir(path) and not os.path.islink(path):
                _hide([os.path.join(path, n) for n in os.listdir(path)], keep)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
        elif os.path.isfile(path) and not os.path.islink(path):
            _mount("/dev/null", path, None, MS_BIND)


def _world_writable(top: str = "/", depth: int = SCAN_DEPTH, count: int = SCAN_COUNT, seconds: float = SCAN_SECONDS,
                    skip=NOT_SCANNED, extra=None) -> list:
    """Every folder under `top` (`depth` levels deep, at most `count` folders looked at, for `seconds` at most) and
    of `extra` (default: every mount point, and PRIVATE_DIRS) whose mode lets anybody write in it (sticky or not):
    the places one worker could leave something for the next. A folder inside one found is not listed (it goes with
    it); links are not followed; `skip` is not entered."""
    found, seen = [], 0
    deadline = time.monotonic() + seconds

    def look(path: str) -> bool:  # True: keep walking below it
        nonlocal seen
        seen += 1
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
        if info.st_mode & stat.S_IWOTH:
            found.append(path)
            return False
        return True
    level = [top]
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            for name in names:
                path = os.path.join(folder, name)
                if any(path == s or path.startswith(s + "/") for s in skip):
                    continue
                if look(path):
                    below.append(path)
                if seen >= count or time.monotonic() > deadline:
                    break
            if seen >= count or time.monotonic() > deadline:
                break
        level = below
    for path in [*_mount_points(), *PRIVATE_DIRS] if extra is None else extra:
        skipped = any(path == s or path.startswith(s + "/") for s in skip)
        if seen < count and path != top and not skipped and path not in found:
            look(path)
    return list(covering(found))


def _mount_points(limit: int = 1000) -> list:
    """The mount points of this process's namespace (from /proc/self/mounts, its octal escapes undone)."""
    try:
        with open("/proc/self/mounts", "rb") as f:
            lines = f.read(1 << 20).splitlines()[:limit]
    except OSError:
        return []
    unescape = lambda m: bytes([int(m.group(1), 8) & 0xFF])  # noqa: E731
    points = [fields[1] for fields in (line.split(b" ") for line in lines) if len(fields) > 2]
    return [os.fsdecode(re.sub(rb"\\([0-7]{3})", unescape, p)) for p in points if p.startswith(b"/")]


def _private_dirs(lab_dir: str, keep=()):
    """An empty tmpfs of the worker's own over every world-writable folder (SHARED, else PRIVATE_DIRS); one that
    holds or is among `keep` (the interpreter's folders) is bound read-only instead. The worker's copy of the lab
    files is bound back in place."""
    fd = os.open(lab_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        for path in SHARED or PRIVATE_DIRS:
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            if any(path == k or k.startswith(path + "/") or path.startswith(k + "/") for k in keep):
                if _mount(path, path, None, MS_BIND | MS_REC):
                    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
                continue
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
        if not os.path.isdir(lab_dir):
            os.makedirs(lab_dir, mode=0o700)
            _mount(f"/proc/self/fd/{fd}", lab_dir, None, MS_BIND)
    finally:
        os.close(fd)


def _keep() -> list:
    """The interpreter's folders (and its packages'): a worker must still import from them."""
    import site
    places = [sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), os.path.dirname(os.__file__)]
    places += [os.path.dirname(os.path.dirname(m.__file__)) for m in list(sys.modules.values())
               if getattr(m, "__file__", None) and "site-packages" in m.__file__ and m.__name__.count(".") == 0]
    return sorted({os.path.realpath(p) for p in places if p})


def _limits(spec: dict):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
    if spec.get("device") == "cpu" and spec.get("memory"):  # RLIMIT_AS breaks CUDA start-up; the judge polls RSS there
        cap = int(spec["memory"] * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if spec.get("cpu_seconds"):
        cpu = int(spec["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))


def _confine(spec: dict) -> dict:
    """Namespaces first (while still privileged), then the uid. Returns what was achieved."""
    got = {}
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    # an IPC namespace too: System V shared memory, semaphores and message queues are the worker's own
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | (0 if root else CLONE_NEWUSER)
    if _unshare(flags):
        got["namespaces"] = True
        if not root:  # map ourselves, so that mounts inside are allowed
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
            except OSError:
                pass
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        keep = KEEP or _keep()
        _hide(spec.get("hide", []), keep)
        _private_dirs(spec["lab_dir"], keep)
    return got


CPU_SHARES, CPU_WEIGHT = 1024, 100  # every worker the same CPU share (v1 cpu.shares, v2 cpu.weight: the defaults)


def _cgroup(spec: dict, pid: int) -> list:
    """Folders of new cgroups that hold the worker with everything it starts: v1 memory and pids (caps), v1 cpu
    (a CPU share of its own, equal for every worker, so that many busy processes of one worker get one worker's
    share) and cpuacct (its CPU time, read by the judge), or, where a v2 subtree with the cpu controller is
    writable, one v2 cgroup with cpu.weight; [] when none is writable. The worker joins them itself, before it runs
    any student code."""
    made = []
    cap = int(spec["memory"] * (1 << 30)) if spec.get("memory") and spec.get("device") == "cpu" else None
    wanted = {"memory": [("memory.limit_in_bytes", cap)] if cap else None, "pids": [("pids.max", MAX_TASKS)],
              "cpu": [("cpu.shares", CPU_SHARES)], "cpuacct": [], "": [("cpu.weight", CPU_WEIGHT)]}
    bases = _cgroup_bases()
    if any(name == "cpu" for name, _ in bases):  # v1 cpu is there: the v2 hierarchy has no cpu controller to give
        bases = [(name, base) for name, base in bases if name]
    for name, base in bases:
        if wanted.get(name) is None:
            continue
        folder = f"{base}/labgrade-{os.getpid()}-{pid}"
        try:
            os.mkdir(folder)
            for file, value in wanted[name]:
                _write(os.path.join(folder, file), str(value))
            made.append(folder)
        except OSError:
            _rmdir(folder)
    return made


def cpu_usage_file(cgroups: list):
    """The file that counts the CPU time of every process in a worker's cgroups (v1 cpuacct.usage, in ns; v2
    cpu.stat, usage_usec), or None."""
    for folder in cgroups:
        if os.path.exists(os.path.join(folder, "cpuacct.usage")):
            return os.path.join(folder, "cpuacct.usage")
    for folder in cgroups:
        if os.path.exists(os.path.join(folder, "cpu.weight")) and os.path.exists(os.path.join(folder, "cpu.stat")):
            return os.path.join(folder, "cpu.stat")
    return None


def _cgroup_bases() -> list:
    """(controller, folder) of this process's v1 memory, pids, cpu and cpuacct cgroups, each hierarchy once (a
    mount that holds cpu and cpuacct together counts as cpu), and ("", folder) of its v2 cgroup where the cpu
    controller is enabled for the cgroups under it."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return []
    bases, seen = [], set()
    for _, controllers, path in lines:
        names = controllers.split(",")
        if controllers == "" and path:
            for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                base = mount + path.rstrip("/")
                try:
                    with open(f"{base}/cgroup.subtree_control") as f:
                        enabled = f.read().split()
                except OSError:
                    continue
                if "cpu" in enabled and base not in seen:
                    seen.add(base)
                    bases.append(("", base))
            continue
        for name in ("memory", "pids", "cpu", "cpuacct"):
            if name not in names:
                continue
            joint = f"/sys/fs/cgroup/{controllers}{path.rstrip('/')}"
            base = joint if os.path.isdir(joint) else f"/sys/fs/cgroup/{name}{path.rstrip('/')}"
            real = os.path.realpath(base)
            if real not in seen:
                seen.add(real)
                bases.append((name, base))
    return bases


def _sweep():
    """Remove the empty cgroups a zygote that was killed outright (SIGKILL) left behind."""
    for _, base in _cgroup_bases():
        try:
            names = [n for n in os.listdir(base) if n.startswith("labgrade-")]
        except OSError:
            continue
        for name in names:
            try:
                os.kill(int(name.split("-")[1]), 0)
            except (ProcessLookupError, ValueError, IndexError):
                _rmdir(f"{base}/{name}")
            except PermissionError:
                pass


def _rmdir(folder: str):
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _become(spec: dict):
    uid = spec.get("uid")
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if not any(os.path.exists(os.path.join(f, "pids.max")) for f in spec.get("cgroups") or []):
            resource.setrlimit(resource.RLIMIT_NPROC, (MAX_TASKS, MAX_TASKS))


def _worker(spec: dict, fds: list, sock: socket.socket):
    """In the forked child: never returns."""
    try:
        req_r, resp_w, out_w, ctl_w = fds
        os.close(ctl_w)
        sock.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        keep = {0, 1, 2, req_r, resp_w}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for folder in spec.get("cgroups", []):  # this process and all it starts
            _write(os.path.join(folder, "cgroup.procs"), str(os.getpid()))
        if _confine(spec).get("namespaces"):
            # the first child in the new pid namespace is its pid 1: when it ends, everything it started ends too
            pid = os.fork()
            if pid:
                os.close(req_r)
                os.close(resp_w)
                _, status = os.waitpid(pid, 0)
                if os.WIFSIGNALED(status):  # mirror the inner status, so the judge sees what happened
                    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
                    os.kill(os.getpid(), os.WTERMSIG(status))
                os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)
            # pid 1 of the new namespace: a /proc that shows this namespace only
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        parent = os.getppid()
        _limits(spec)
        _become(spec)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        if os.getppid() != parent:  # the outer process died before that: nobody would end us
            os._exit(72)
        from worker.serve import serve
        serve(req_r, resp_w, spec["lab_dir"], spec.get("device", "cpu"), spec.get("standins") or [])
        os._exit(0)
    except BaseException:
        try:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(71)


def _chown_tree(path: str, uid: int):
    os.chown(path, uid, uid)
    for name in os.listdir(path):
        os.chown(os.path.join(path, name), uid, uid, follow_symlinks=False)


def run(sock: socket.socket):
    """The zygote's loop. Never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's (first: the search below is slow)
    prctl(PR_SET_DUMPABLE, 0)
    KEEP[:] = _keep()
    SHARED[:] = _world_writable()
    _sweep()
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # what a worker leaves behind is reparented here, and reaped
    workers = {}  # pid -> {"ctl": fd, "judge": pidfd or None, "uid": uid, "lock": fd, "cgroups": [folder]}

    def kill_all(*_):
        for pid, w in workers.items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # reap what they leave behind, so nothing lingers as a zombie
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.01)
            except ChildProcessError:
                break
        for w in workers.values():
            _end(w)
        for folder in [f for sets in POOL.values() for group in sets for f in group] + \
                [f for _, group in DRAINING for f in group]:
            _rmdir(folder)
        os._exit(0)
    signal.signal(signal.SIGTERM, kill_all)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    while True:
        judges = {w["judge"]: pid for pid, w in workers.items() if w["judge"] is not None}
        try:
            ready, _, _ = select.select([sock, *judges], [], [], 0.05)
        except InterruptedError:
            ready = []
        for fd in ready:
            if fd is sock:
                try:
                    msg, fds, _, _ = socket.recv_fds(sock, len(SPEC) + 1, 5)
                except OSError:
                    msg, fds = b"", []
                if not msg:
                    kill_all()
                spec = _read_spec(msg, fds)
                if spec is None:  # a cut or malformed request: no worker (the judge sees "could not start")
                    for fd in fds:
                        os.close(fd)
                    continue
                _spawn(spec, fds[1:], sock, workers)
            else:  # the judge that asked for this worker is gone
                try:
                    os.kill(judges[fd], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while True:  # reap workers, and what they left behind (reparented here)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            w = workers.pop(pid, None)
            if w is None:
                continue
            try:
                os.write(w["ctl"], f"exit {status}\n".encode())
            except OSError:
                pass
            os.close(w["ctl"])
            if w["judge"] is not None:
                os.close(w["judge"])
            _end(w)
        if DRAINING:
            _recycle()


def _claim_uid(used: set):
    """(uid, lock fd) of a uid no worker of any grader on this machine runs under, or (None, None)."""
    folder = next((f for f in UID_LOCKS if _own_folder(f)), None)
    if folder is None:
        return None, None
    for uid in UIDS:
        if uid in used:
            continue
        try:
            fd = os.open(f"{folder}/{uid}", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    return None, None


def _own_folder(path: str) -> bool:
    """path is (or now is) a folder of root's that nobody else can write (never one somebody else made)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    info = os.lstat(path)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o022


def _end(w: dict):
    """After a worker: kill every process still running under its uid, remove what the uid left in the machine's
    world-writable folders (where it had no private ones, a later worker would find it), then free its uid and
    cgroups."""
    if w.get("uid") is not None:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(w["uid"])
                os.setuid(w["uid"])
                os.kill(-1, signal.SIGKILL)  # as that uid: every process of the uid but this one
                _clean(w["uid"], SHARED or PRIVATE_DIRS, spare=(w.get("lab_dir"),))
                _clean_ipc(w["uid"])
                os.kill(-1, signal.SIGKILL)  # one that was still starting when the first signal went
            finally:
                os._exit(0)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(w["lock"])
    if w.get("cgroups"):
        DRAINING.append((w["caps"], w["cgroups"]))
    _recycle()


def _clean(uid: int, folders, spare=(), depth: int = CLEAN_DEPTH, count: int = CLEAN_COUNT) -> int:
    """Remove every file and folder owned by `uid` in `folders` (and in the world-writable folders below them), but
    `spare`; returns how many went. Run as that uid, never as root: it removes only what the uid itself could (its
    own files in a sticky folder, anything in its own folders), and a link swapped in under it leads nowhere else.
    At most `count` entries are looked at, `depth` levels down."""
    spare = {os.path.normpath(p) for p in spare if p}
    budget = [count, 0]  # looked at, removed

    def entries(folder):
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                    yield e
        except OSError:
            return

    def remove(path, info, level):
        if stat.S_ISDIR(info.st_mode):
            try:
                os.chmod(path, 0o700)  # a folder it closed to itself (a link here was not followed: lstat said dir)
            except OSError:
                pass
            if level > 0:
                for e in list(entries(path)):
                    try:
                        remove(e.path, e.stat(follow_symlinks=False), level - 1)
                    except OSError:
                        pass
            os.rmdir(path)
        else:
            os.unlink(path)
        budget[1] += 1

    def walk(folder, level):
        for e in list(entries(folder)):
            if e.path in spare:
                continue
            try:
                info = e.stat(follow_symlinks=False)
                if info.st_uid == uid:
                    remove(e.path, info, level)
                elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH and level > 0:
                    walk(e.path, level - 1)  # somebody's folder that anybody may write in
            except OSError:
                pass
    for folder in folders:
        walk(folder, depth)
    return budget[1]


IPC_RMID = 0
SYSVIPC = {"shm": ("shmid", lambda lib, i: lib.shmctl(i, IPC_RMID, None)),
           "sem": ("semid", lambda lib, i: lib.semctl(i, 0, IPC_RMID)),
           "msg": ("msqid", lambda lib, i: lib.msgctl(i, IPC_RMID, None))}


def _clean_ipc(uid: int, listing: str = "/proc/sysvipc") -> int:
    """Remove the System V shared memory, semaphores and message queues `uid` owns or made in this IPC namespace
    (a worker without an IPC namespace of its own could leave them for the next); run as that uid. Returns how
    many went."""
    lib, removed = ctypes.CDLL(None, use_errno=True), 0
    for kind, (id_column, remove) in SYSVIPC.items():
        try:
            with open(os.path.join(listing, kind)) as f:
                lines = f.read(1 << 20).splitlines()[:10000]
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        try:
            at_id, at_uid, at_cuid = header.index(id_column), header.index("uid"), header.index("cuid")
        except ValueError:
            continue
        for line in lines[1:]:
            cells = line.split()
            if len(cells) > max(at_id, at_uid, at_cuid) and str(uid) in (cells[at_uid], cells[at_cuid]):
                removed += remove(lib, int(cells[at_id])) == 0
    return removed


def _recycle():
    """Cgroups whose last process (zombies included) is gone go to the pool: the next worker with the same caps
    takes them over (a cgroup costs milliseconds to make)."""
    for caps, group in list(DRAINING):
        try:
            empty = all(not open(os.path.join(f, "cgroup.procs")).read().strip() for f in group)
        except OSError:
            empty = False
        if empty:
            DRAINING.remove((caps, group))
            POOL.setdefault(caps, []).append(group)


def _read_spec(msg: bytes, fds: list):
    """The WorkerSpec a judge sent (as a dict): one frame in the file its first descriptor holds, so a spec of any
    size the grader makes fits; None for anything else. The spec file is closed here."""
    if msg != SPEC or len(fds) != 5:
        return None
    try:
        spec, blob = read_frame(fds[0], (WorkerSpec,))
    except (ProtocolError, OSError, struct.error):
        return None
    finally:
        os.close(fds[0])
    return dataclasses.asdict(spec) if not blob else None


def _spawn(spec: dict, fds: list, sock, workers: dict):
    if len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return
    ctl = fds[3]
    uid = lock = None
    if os.geteuid() == 0:
        uid, lock = _claim_uid({w["uid"] for w in workers.values()})
        if uid is not None:
            try:
                _chown_tree(spec["lab_dir"], uid)
            except OSError:
                os.close(lock)
                uid = lock = None
    try:
        judge = os.pidfd_open(spec["judge"]) if spec.get("judge") else None
    except (OSError, AttributeError):
        judge = None
    _spawn.count = getattr(_spawn, "count", 0) + 1
    caps = (spec.get("memory"), spec.get("device"))
    cgroups = POOL[caps].pop() if POOL.get(caps) else _cgroup(spec, _spawn.count)
    pid = os.fork()
    if pid == 0:
        _worker({**spec, "uid": uid, "cgroups": cgroups}, fds, sock)
    for fd in fds[:3]:
        os.close(fd)
    workers[pid] = {"ctl": ctl, "judge": judge, "uid": uid, "lock": lock, "cgroups": cgroups, "caps": caps,
                    "lab_dir": spec.get("lab_dir")}
    try:
        os.write(ctl, f"pid {pid} {uid if uid is not None else -1} {cpu_usage_file(cgroups) or '-'}\n".encode())
    except OSError:
        pass


def confinement() -> str:
    """What this machine allows a worker: "uid" (running as root), "namespaces" (user namespaces), or ""."""
    if os.geteuid() == 0:
        return "uid"
    pid = os.fork()
    if pid == 0:  # a child with one thread: unshare(CLONE_NEWUSER) refuses a threaded process
        os._exit(0 if _unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) else 1)
    _, status = os.waitpid(pid, 0)
    return "namespaces" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else ""


def start() -> socket.socket:
    """Fork the zygote from this process; returns the socket on which judges ask it for workers."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            run(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return ours
