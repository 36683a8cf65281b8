"""A background service process with a log file and a health check, and the checks ``make run-full``
uses to tell a user what is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anna_backend.adapters.artifacts import tail


class ServiceFailed(RuntimeError):
    """A service did not start or did not become healthy; the message holds the end of its log."""


@dataclass
class Service:
    """A started process (leading its own process group) and where it logs."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after ``timeout``."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def failure(self, what: str) -> ServiceFailed:
        log_tail = tail(self.log_path, lines=40)
        return ServiceFailed(f"{self.name} {what}; the end of {self.log_path}:\n{log_tail}")


def start(name: str, argv: Sequence[str], *, env: dict[str, str], log_path: Path,
          cwd: Path | None = None, url: str = "") -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=cwd, start_new_session=True)
    return Service(name=name, process=process, log_path=log_path, url=url)


def wait_until(service: Service, healthy: Callable[[], bool], *, timeout_s: float, what: str = "") -> None:
    """Poll ``healthy`` until it holds; raise ``ServiceFailed`` with the log tail if the process dies
    or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise service.failure(f"exited with code {service.process.returncode} before it was ready")
        try:
            if healthy():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.5)
    raise service.failure(f"was not {what or 'healthy'} within {timeout_s:.0f} s")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
