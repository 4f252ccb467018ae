"""Shared test fixtures: paths to the parity fixture sets and a CUDA skip marker."""

import os
from pathlib import Path

import pytest
import torch

# ../shared beside the checkout; TTS_SHARED overrides it (the GPU device has no ../shared).
SHARED = Path(os.environ.get("TTS_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
FIXTURES = SHARED / "fixtures"
MANIFESTS = SHARED / "spec" / "manifests"
OFFICIAL_CONFIG = SHARED / "spec" / "config.official.yaml"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped (with the reason) where CUDA is not available; where it is, they
    form one pytest-xdist group, so that under ``-n 2 --dist loadgroup`` one worker runs them
    all, one at a time, instead of two processes sharing the GPU."""
    cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs CUDA (run on the GPU device; see docs/gpu.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("gpu") if cuda else skip)


def pytest_runtest_logreport(report):
    """With ``TTS_TEST_FAILURES=path``, each failure's report is appended to that file as soon
    as the test fails, so a run cut off by a time limit still records why (docs/gpu.md)."""
    path = os.environ.get("TTS_TEST_FAILURES")
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def official_config() -> Path:
    return OFFICIAL_CONFIG
