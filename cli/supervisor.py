"""A small process supervisor for `incident-manager run`: start the Procfile's processes, prefix
their output, say when each is ready, and stop them all on Ctrl-C within a few seconds.

Why not honcho's manager (used before): it SIGTERMs every process group, so Celery's pool children
were killed under their parent and the worker took ~5 s to notice; it waits 5 s before SIGKILL, and
it reports each process as "stopped (rc=-15)", which reads like a failure. Here each process gets
its own session (so a terminal's Ctrl-C reaches only the supervisor), the signal goes to the process
itself (gunicorn's master and Celery's main process stop their own children), and one line sums up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import click

# A stop request gets this long before the stragglers are SIGKILLed: an idle process stops in well
# under a second; a longer wait would only hide a process that hangs (work a kill interrupts is not
# lost: it was committed and the outbox relay re-sends it).
STOP_GRACE_SECS = 2.0
_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()


def _die_with_parent() -> None:
    # Children live in their own sessions; this makes them end if the supervisor is killed outright.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_open(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False
    return check


def file_exists(path: Path) -> Callable[[], bool]:
    return path.exists


@dataclass
class Child:
    name: str
    command: str
    ready: Callable[[], bool]
    ready_text: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    is_ready: bool = False
    reader: threading.Thread | None = None


class Supervisor:
    def __init__(self, children: list[Child], cwd: Path, echo: Callable[[str], None] = click.echo,
                 width: int = 0) -> None:
        self.children = children
        self.cwd = cwd
        self._echo = echo
        self._echo_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._signals = 0
        self._stop_signal = signal.SIGTERM
        self._width = max([width, *(len(c.name) for c in children)])

    def say(self, name: str, text: str) -> None:
        with self._echo_lock:
            self._echo(f"{name:<{self._width}} | {text}")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals == 1:
            self._stop_signal = signal.Signals(signum)
        self._stop_requested.set()
        if self._signals > 1:  # a second Ctrl-C: no more grace
            for child in self.children:
                self._kill(child)

    def _forward(self, child: Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(child.name, raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def start(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # every process first, then the reader threads: preexec_fn runs between fork and exec, which
        # is only safe while this process has a single thread
        for child in self.children:
            child.process = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {child.command}"], cwd=self.cwd, env=child.env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent)
        for child in self.children:
            assert child.process is not None and child.process.stdout is not None
            child.reader = threading.Thread(target=self._forward, args=(child, child.process.stdout),
                                            name=f"output-{child.name}", daemon=True)
            child.reader.start()
            self.say("run", f"{child.name} started (pid {child.process.pid})")

    def wait_ready(self) -> Child | None:
        """Until every child is ready (None), a child exits (that child) or a stop is requested."""
        while not self._stop_requested.is_set():
            for child in self.children:
                assert child.process is not None
                if child.process.poll() is not None:
                    return child
                if not child.is_ready and child.ready():
                    child.is_ready = True
                    self.say("run", f"{child.name} ready{': ' + child.ready_text if child.ready_text else ''}")
            if all(c.is_ready for c in self.children):
                return None
            self._stop_requested.wait(0.1)
        return None

    def wait_stop(self) -> Child | None:
        """Until a stop is requested (None) or a child exits on its own (that child)."""
        while not self._stop_requested.wait(0.2):
            for child in self.children:
                assert child.process is not None
                if child.process.poll() is not None:
                    return child
        return None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def stop(self) -> tuple[float, list[str]]:
        """Pass the stop signal on to every running child (Ctrl-C's SIGINT means each program's own
        Ctrl-C: gunicorn's quick stop, Celery's warm shutdown; SIGTERM stays SIGTERM), SIGKILL what
        is left after STOP_GRACE_SECS. Returns the seconds it took and the names of the killed ones."""
        started = time.monotonic()
        for child in self.children:
            assert child.process is not None
            if child.process.poll() is None:
                try:
                    child.process.send_signal(self._stop_signal)
                except ProcessLookupError:
                    pass
        killed: list[str] = []
        deadline = started + STOP_GRACE_SECS
        for child in self.children:
            assert child.process is not None
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(child.name)
                self._kill(child)
                child.process.wait()
        for child in self.children:
            self._kill(child)  # anything a child left behind in its session (a pool process, a greenlet's helper)
        lines_until = time.monotonic() + 0.3  # the last lines of output; Ctrl-C must end within 3 s
        for child in self.children:
            if child.reader is not None:
                child.reader.join(max(0.0, lines_until - time.monotonic()))
        return time.monotonic() - started, killed

    @staticmethod
    def _kill(child: Child) -> None:
        if child.process is None:
            return
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
