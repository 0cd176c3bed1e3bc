"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module single-threaded: its tensors are tiny, and on shared cores thread hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ROOT = Path(__file__).resolve().parent.parent


def build_site(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config`` into ``out`` (what ``make docs`` runs), with its output."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(config.parent), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation site built once from this checkout (docs/ and mkdocs.yml), warnings as errors."""
    out = tmp_path_factory.mktemp("site")
    built = build_site(ROOT / "mkdocs.yml", out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


@pytest.fixture(scope="session")
def fault_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' fault-injection app (``tests/fault_app.py``: cifar100_ats behind ``tests/faults``), built once."""
    from tests.fault_app import build_fault_app

    return build_fault_app(tmp_path_factory.mktemp("apps") / "faulty_ats")
