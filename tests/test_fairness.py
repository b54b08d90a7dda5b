"""A worker is judged by its own work: its processes share one CPU share (a cgroup, where writable), its requests are
limited in the CPU seconds they use, the wall clock is only an outer bound, and a check that timed out while the
machine was busy runs once more. A CPU hog in one job slot leaves the correct submission in the other its marks.

The unit tests below each run their check against a buggy variant too, to show the check can fail."""
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from judge.client import WorkerGone, cgroup_cpu, tree_cpu, tree_waited
from judge.runner import run_check
from parent.verdict import Check, decide
from protocol import messages as m
from protocol.codec import decode, encode
from protocol.messages import Fault, Usage, machine_busy
from tests.helpers import grade_many, submission
from worker.zygote import _cgroup, _rmdir, confinement, cpu_usage_file

L4_IMPORT = "import torch\n"
# six busy children, each in a session of its own, started when the lab file is imported (every worker of the lab
# imports it); each ends by itself after 60 s should anything let it outlive its worker
HOG = '''
import os as _os, time as _time
for _ in range(6):
    if _os.fork() == 0:
        _os.setsid()
        _end = _time.monotonic() + 60
        while _time.monotonic() < _end:
            pass
        _os._exit(0)
'''


# ---- a hog beside a correct submission ----------------------------------------------------------------------
@pytest.mark.skipif(not confinement(), reason="workers cannot be confined here: the hog's children would outlive them")
def test_a_cpu_hog_leaves_the_other_job_slot_its_marks(tmp_path):
    hog = submission(tmp_path / "hog", "lab4", [(L4_IMPORT, L4_IMPORT + HOG)])
    alice = submission(tmp_path / "alice")
    results = grade_many({"hog": (hog, ["lab4"]), "alice": (alice, ["lab4"])}, timeout=10, jobs=2)
    mine = results["alice"]["lab4"]
    # what the hog itself scores depends on how much CPU its children got: only the classmate's marks are asserted
    # (that the children's CPU time counts against their own worker is shown, machine-independently, below)
    assert mine["status"] == "passed" and mine["score"] == mine["max"], (mine["detail"], {
        n: c["message"] for n, c in mine["checks"].items() if not c["passed"]}, results["hog"]["lab4"]["status"])


def test_the_hogs_children_are_counted_in_its_cgroup():
    """The cgroup's counter holds the CPU time of every process put in it, those that ended and were reaped too;
    the worker's process tree in /proc loses them."""
    made = _cgroup({"memory": 1, "device": "cpu"}, os.getpid() % 1000)
    try:
        usage = cpu_usage_file(made)
        if usage is None:
            pytest.skip("no writable cpu cgroup here: CPU time is read from /proc")
        before = cgroup_cpu(usage)
        code = ("import os, sys, time\n"
                "for f in sys.argv[1:]: open(f + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
                "pid = os.fork()\n"
                "if pid == 0:\n    os.setsid(); t = time.process_time()\n"
                "    while time.process_time() - t < 0.5: pass\n    os._exit(0)\n"
                "os.waitpid(pid, 0)\n")
        subprocess.run([sys.executable, "-c", code, *made], check=True, timeout=60)
        assert cgroup_cpu(usage) - before >= 0.45
    finally:
        for folder in made:
            _rmdir(folder)


# ---- CPU time of a process tree --------------------------------------------------------------------------
BURN = ("import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    t = time.process_time()\n    while time.process_time() - t < 0.6: pass\n"
        "    sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(60); os._exit(0)\n"
        "time.sleep(60)\n")


def only_the_top(pid: int) -> float:  # a buggy measure: the worker's own process, not what it started
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def counts_children(measure) -> bool:
    """A process whose child burns 0.6 s of CPU has used at least 0.5 s, by `measure`."""
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "done"
        return measure(proc.pid) >= 0.5
    finally:
        proc.kill()
        proc.wait()


def test_cpu_time_counts_the_whole_process_tree():
    assert counts_children(tree_cpu)
    assert not counts_children(only_the_top)


def test_cgroup_counters_are_read_in_seconds(tmp_path):
    (tmp_path / "cpuacct.usage").write_text("2500000000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert cgroup_cpu(str(tmp_path / "cpuacct.usage")) == 2.5
    assert cgroup_cpu(str(tmp_path / "cpu.stat")) == 1.5
    assert cgroup_cpu(str(tmp_path / "missing")) is None


def test_waiting_for_a_cpu_is_read_where_the_kernel_keeps_it():
    if not os.path.exists("/proc/self/schedstat"):
        pytest.skip("this kernel keeps no run delay (schedstat)")
    assert tree_waited(os.getpid()) >= 0.0
    assert tree_waited(2 ** 22 + 7) == 0.0  # no such process


# ---- the busy-machine decision --------------------------------------------------------------------------
BUSY = Usage(cpu=1.0, wall=9.0, waited=6.0, cpu_limit=3.0, wall_limit=9.0, measured="cgroup")
CASES = [
    (BUSY, True),  # stopped at the wall bound with CPU to spare, waiting for a CPU most of the time
    (dataclasses.replace(BUSY, waited=0.1), False),  # it slept or waited on itself: the student's own doing
    (dataclasses.replace(BUSY, cpu=3.2), False),  # it used its CPU limit: slow, whatever the machine did
    (dataclasses.replace(BUSY, wall=4.0), False),  # it did not reach the wall bound (the lab's time ran out)
    (None, False),
]


def busy_policy_holds(decide_busy) -> bool:
    return all(decide_busy(usage) == want for usage, want in CASES)


def test_busy_machine_decision():
    assert busy_policy_holds(machine_busy)
    assert not busy_policy_holds(lambda u: u is not None and u.cpu < u.cpu_limit)  # ignores the waiting
    assert not busy_policy_holds(lambda u: u is not None and u.waited > 0)  # ignores the limits


class FakeWorker:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def flaky(usages):
    """A check that times out with each of `usages` in turn, then passes; it counts its runs."""
    def check(w):
        check.runs += 1
        if check.runs <= len(usages):
            raise WorkerGone(Fault.TIMEOUT, "no answer", usages[check.runs - 1])
        return []
    check.runs = 0
    return check


def rerun_policy_holds(run) -> bool:
    """Busy once: passes on the second run, which says so; busy twice: fails after two runs; a plain timeout (or
    a timeout with CPU to spare that waited for nothing) runs once."""
    ok = True
    check = flaky([BUSY])
    done = run("test_x", check, FakeWorker(), "lab1")
    ok &= done.outcome == "passed" and check.runs == 2 and done.rerun is not None and done.rerun.usage == BUSY
    check = flaky([BUSY, BUSY])
    done = run("test_x", check, FakeWorker(), "lab1")
    ok &= done.outcome == "failed" and check.runs == 2 and done.failure.fault is Fault.TIMEOUT and done.rerun is not None
    for usage in (dataclasses.replace(BUSY, waited=0.0), dataclasses.replace(BUSY, cpu=3.0), None):
        check = flaky([usage])
        done = run("test_x", check, FakeWorker(), "lab1")
        ok &= done.outcome == "failed" and check.runs == 1 and done.rerun is None
    return bool(ok)


def test_a_check_that_timed_out_on_a_busy_machine_runs_once_more():
    assert rerun_policy_holds(run_check)
    assert not rerun_policy_holds(lambda *a: run_check(*a, rerun=False))  # never re-runs

    def always(name, check, worker, lab):  # re-runs every timeout
        done = run_check(name, check, worker, lab, rerun=False)
        if done.failure is not None and done.failure.fault is Fault.TIMEOUT:
            done = dataclasses.replace(run_check(name, check, worker, lab, rerun=False), rerun=done.failure)
        return done
    assert not rerun_policy_holds(always)


def test_the_rerun_travels_to_the_scorecard():
    check = flaky([BUSY])
    done = run_check("test_causal_mask", check, FakeWorker(), "lab1")
    again = decode(encode(done), m.RECORDS)  # the parent reads what the judge sent
    assert again == done and again.rerun.usage == BUSY

    class Task:
        lab, timeout, device, select = "lab1", 10.0, "cpu", None

    class Outcome:
        task, error, timed_out, signal, output, seconds = Task, None, False, None, "", 1.0
        records = [m.Start("cpu", 1), m.Imported(True), again, m.End("")]
    result = decide(Outcome, [Check("test_causal_mask", 2, "")])
    assert result.status == "passed" and result.score == 2
    assert any("re-run once" in n and "machine was busy" in n for n in result.notes), result.notes


def test_the_lab_bounds_are_cpu_seconds_within_a_longer_wall_clock():
    from judge.client import Worker
    w = Worker({}, timeout=4.0, deadline=time.monotonic() + 100, budget=10.0)
    assert w.limits() == (4.0, 4.0 * m.WALL_FACTOR)
    w.budget[0] = 1.5
    cpu, wall = w.limits()
    assert cpu == 1.5 and wall == 1.5 * m.WALL_FACTOR
    w.deadline = time.monotonic() + 2.0
    assert w.limits()[1] <= 1.5
    assert w.sibling({}).budget is w.budget  # one budget for the lab's workers
