"""pytest plugin of the checkers: which lab folder and device to check, and a fixed seed per check.

The grader loads it with `-p checkers.plugin`; `pytest checkers/` loads it through checkers/conftest.py.
"""
import os

import pytest
import torch

from checkers.common import ROOT, configure


def pytest_addoption(parser):
    group = parser.getgroup("lab pack")
    group.addoption("--lab-dir", default=os.environ.get("LAB_DIR", str(ROOT / "labs")),
                    help="folder holding the lab files to check (default labs/, or $LAB_DIR)")
    group.addoption("--lab-device", default=os.environ.get("LAB_DEVICE", "cpu"),
                    help="device the checks run on: cpu, cuda or auto (default cpu, or $LAB_DEVICE)")


def pytest_configure(config):
    device = config.getoption("--lab-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    configure(config.getoption("--lab-dir"), device)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
