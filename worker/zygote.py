"""The zygote: a process holding torch and the worker code, and nothing of the grader, that forks workers.

The parent forks it right after importing torch (before any checker, oracle or expected value exists in its
memory), so a worker forked from it has nothing of the grader to read or call. A judge asks for a worker by
sending, over the zygote's socket, a spec and four pipe ends: requests in, answers out, the worker's output, and
a control pipe on which the zygote writes the worker's pid (`pid N`) and, once it is gone, its wait status
(`exit STATUS`). A worker whose judge dies is killed; when every holder of the socket is gone, the zygote kills
its workers and exits.

A worker is confined as far as the machine allows: its own session, resource limits, a pid namespace (what it
starts dies with it), a mount namespace in which the grader's tree is hidden, and, where the grader runs as
root, an unprivileged uid of its own (one per running worker), owning only its private copy of the lab files.
"""
import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys
import time

UIDS = range(61000, 61064)  # one per concurrently running worker, when running as root
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 1, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
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


def _hide(paths, keep: str):
    """In this (private) mount namespace, cover each path with an empty read-only tmpfs (files: /dev/null).

    A path that holds `keep` (the interpreter's own environment, say) is entered rather than covered.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path in paths:
        if not os.path.lexists(path):
            continue
        if path == keep or path.startswith(keep + "/"):
            continue
        if keep.startswith(path.rstrip("/") + "/"):
            if os.path.isdir(path) and not os.path.islink(path):
                _hide([os.path.join(path, n) for n in os.listdir(path)], keep)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY, "size=4k,mode=0555")
        elif os.path.isfile(path) and not os.path.islink(path):
            _mount("/dev/null", path, None, MS_BIND)


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
    """Namespaces first (while still privileged), then the uid. Returns what was achieved, for the report."""
    got = {}
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWPID | CLONE_NEWNS | (0 if root else CLONE_NEWUSER)
    if _unshare(flags):
        got["namespaces"] = True
        if not root:  # map ourselves, so that mounts inside are allowed
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
            except OSError:
                pass
        _hide(spec.get("hide", []), os.path.realpath(sys.prefix))
    return got


def _become(spec: dict):
    uid = spec.get("uid")
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))


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
        parent = os.getppid()
        _limits(spec)
        _become(spec)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        if os.getppid() != parent:  # the outer process died before that: nobody would end us
            os._exit(72)
        from worker.serve import serve
        serve(req_r, resp_w, spec["lab_dir"], spec.get("device", "cpu"))
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
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # what a worker leaves behind is reparented here, and reaped
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    workers = {}  # pid -> {"ctl": fd, "judge": pidfd or None, "uid": uid}

    def kill_all(*_):
        for pid in workers:
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
                    msg, fds, _, _ = socket.recv_fds(sock, 65536, 4)
                except OSError:
                    msg, fds = b"", []
                if not msg:
                    kill_all()
                _spawn(json.loads(msg), fds, sock, workers)
            else:  # the judge that asked for this worker is gone
                try:
                    os.kill(judges[fd], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while workers:
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


def _spawn(spec: dict, fds: list, sock, workers: dict):
    if len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return
    ctl = fds[3]
    uid = None
    if os.geteuid() == 0:
        used = {w["uid"] for w in workers.values()}
        uid = next((u for u in UIDS if u not in used), None)
        if uid is not None:
            try:
                _chown_tree(spec["lab_dir"], uid)
            except OSError:
                uid = None
    try:
        judge = os.pidfd_open(spec["judge"]) if spec.get("judge") else None
    except (OSError, AttributeError):
        judge = None
    pid = os.fork()
    if pid == 0:
        _worker({**spec, "uid": uid}, fds, sock)
    for fd in fds[:3]:
        os.close(fd)
    workers[pid] = {"ctl": ctl, "judge": judge, "uid": uid}
    try:
        os.write(ctl, f"pid {pid} {uid if uid is not None else -1}\n".encode())
    except OSError:
        pass


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
