"""pytest plugin of the checkers: `pytest checkers/ --lab-dir solutions` runs the checks with a worker fixture.

The grader does not use pytest; this is for working on the checkers. Each test module gets one worker (a fresh
interpreter that runs the lab's file of --lab-dir on the pack's stand-ins for the labs before it, as the grader
does), and each check a fixed seed.
"""
import os
from pathlib import Path

import pytest
import torch

from checkers.client import Worker
from checkers.common import FIGURES, LABS, Skipped
from checkers.standins import files_for
from checkers.static import read_lab_file

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    group = parser.getgroup("lab pack")
    group.addoption("--lab-dir", default=os.environ.get("LAB_DIR", str(ROOT / "labs")),
                    help="folder holding the lab files to check (default labs/, or $LAB_DIR)")
    group.addoption("--lab-device", default=os.environ.get("LAB_DEVICE", "cpu"),
                    help="device the checks run on: cpu, cuda or auto (default cpu, or $LAB_DEVICE)")


@pytest.fixture(scope="module")
def w(request):
    folder = Path(request.config.getoption("--lab-dir"))
    device = request.config.getoption("--lab-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [f"{module}.py" for module, _ in LABS.values()]
    submission = {n: read_lab_file(str(folder / n)) for n in names if (folder / n).is_file()}
    lab = request.module.__name__.rsplit("check_", 1)[-1]
    files, trusted = files_for(lab, submission, ())
    worker = Worker(files, device=device, timeout=120, trusted=trusted)
    worker.lab, worker.submission, worker.own_labs = lab, submission, False
    yield worker
    worker.close()


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A check that does not apply (Skipped: the own-chain check on a lab submitted alone, say) is a skip here."""
    try:
        return (yield)
    except Skipped as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    FIGURES.clear()
    yield
