"""The repository keeps the style the developers' guide asks for: ``ruff check`` clean, and
formatted by ``ruff format`` (Python) and ``snakefmt`` (Snakefile and rule files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The tool next to this interpreter (the project's venv), else on PATH; skip if absent."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    done = _run(_tool("ruff"), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_python_is_ruff_formatted():
    done = _run(_tool("ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_is_snakefmt_formatted():
    done = _run(_tool("snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert done.returncode == 0, done.stdout + done.stderr
