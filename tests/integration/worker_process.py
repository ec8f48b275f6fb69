"""A real ``viewsync worker`` subprocess that can be started, stopped, killed and restarted
(used by the integration tests and the benches)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test or bench process that started it dies, however it
    dies. An orphaned worker would go on writing the views of the next run (two writers)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class WorkerProcess:
    """``python -m app.cli worker`` from ``repo`` with ``env``, output appended to ``log``
    (or ``argv`` in ``repo``: an installed ``viewsync worker``, say)."""

    def __init__(self, env: dict[str, str], log: Path, repo: Path = ROOT,
                 argv: list[str] | None = None) -> None:
        self.env = env
        self.log = log
        self.repo = repo
        self.argv = argv or [sys.executable, "-m", "app.cli", "worker"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.repo, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def kill(self) -> None:
        """SIGKILL: no flush, no commit — the crash the design must survive."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def pause(self) -> None:
        """SIGSTOP the worker and its pipeline process: a VM frozen, a stop-the-world pause,
        a network cut — it misses its heartbeats and does not know."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def _children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def pause_pipeline(self) -> None:
        """SIGSTOP the worker's pipeline process (the one that writes): the worker stays in
        its groups, its batches queue up — a pipeline that lags."""
        for pid in self._children():
            os.kill(pid, signal.SIGSTOP)

    def resume_pipeline(self) -> None:
        for pid in self._children():
            os.kill(pid, signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
