"""Faults on the real stack's processes: a clean stop, a SIGKILL, a start (shared by the
fault tests and ``bench/bench_recovery.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from app.stack.components import Component
from app.stack.manager import Stack, read_pid, start, stop, wait_ready

#: Children this process started (reaped so that a killed one does not linger as a zombie).
_started: dict[str, subprocess.Popen[bytes]] = {}


def component(stack: Stack, name: str) -> Component:
    return next(c for c in stack.components() if c.name == name)


def kill9(stack: Stack, name: str) -> None:
    """SIGKILL the component's whole process group: no shutdown hook, no flush — what a
    power cut or the OOM killer does (PostgreSQL's backends die with the postmaster)."""
    pid = read_pid(stack.paths, name)
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    if name in _started:
        _started.pop(name).wait(30)
    deadline = time.monotonic() + 30
    # Gone for good: no process of the group left, not even a zombie. The PostgreSQL server
    # runs under ``runuser``, so it is a grandchild, reaped by init when init gets to it; until
    # then its pid exists, and a new postmaster takes the old lock file for a live server's.
    while (read_pid(stack.paths, name) is not None or _group_exists(pid)
           or component(stack, name).healthy()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} (process group {pid}) still exists 30 s after SIGKILL")
        time.sleep(0.1)


def _group_exists(pgid: int) -> bool:
    """Whether any process (a zombie too) is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
            return True
    return False


def stop_clean(stack: Stack, name: str) -> None:
    assert stop(stack.paths, component(stack, name)), f"{name} was not running"
    _started.pop(name, None)


def start_again(stack: Stack, name: str) -> None:
    """Start the component and wait until it answers for real."""
    comp = component(stack, name)
    proc = start(stack.paths, comp, stack.settings)
    _started[name] = proc
    wait_ready(stack.paths, comp, proc)
