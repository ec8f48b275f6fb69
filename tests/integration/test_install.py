"""The wheel, installed outside the checkout, is a working worker and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.conftest import ROOT, wait_live
from tests.integration.conftest import WorkerProcess as SessionWorker
from tests.integration.worker_process import WorkerProcess


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv, outside the checkout, with the wheel built from it installed.

    The wheel goes in with ``--no-deps``; its dependencies come from this test run's own
    environment through a ``.pth`` line (the same pinned versions, nothing downloaded). The
    checkout itself is not on that path.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
          str(ROOT)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("viewsync-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).strip())
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
          str(wheel)], cwd=tmp)
    deps = sysconfig.get_paths()["purelib"]
    assert not deps.startswith(str(ROOT / "app"))
    (site / "viewsync-test-deps.pth").write_text(deps + "\n")
    yield venv


def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run([str(installed / "bin" / "python"), "-c",
                  "import app, app.resources as r; print(app.__file__); "
                  "print(r.bundled('schemas')); print(r.bundled('connectors'))"],
                 cwd=tmp_path).split()
    assert all(w.startswith(str(installed)) for w in where), where


def test_installed_cli_help(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "bin" / "viewsync"), "--help"], cwd=tmp_path)
    for command in ("stack", "connectors", "worker", "demo"):
        assert command in out
    out = _run([str(installed / "bin" / "viewsync"), "connectors", "--help"], cwd=tmp_path)
    assert "resnapshot" in out


def test_installed_worker_starts_and_serves_the_views(
    installed: Path, tmp_path: Path, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: SessionWorker,
) -> None:
    """The installed worker (its own consumer group and data directory) decodes with the
    contracts it carries and writes a live change to both consumer databases. (The session
    worker is stopped meanwhile: one writer per view row.)"""
    env = dict(os.environ, VIEWSYNC_WORKER_ID=f"installed-{os.getpid()}",
               VIEWSYNC_WORKER_DATA_DIR=str(tmp_path / "data"))
    env.pop("PYTHONPATH", None)
    w = WorkerProcess(env, tmp_path / "installed-worker.log", repo=tmp_path,
                      argv=[str(installed / "bin" / "viewsync"), "worker"])
    worker.stop()
    try:
        w.start()
        wait_live(product_db, consumer_dbs, w)
    finally:
        w.stop()
        worker.start()
