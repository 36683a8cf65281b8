"""The embedded builder and runner: the tagged commit is the build; a driver process per run does the rest.

A driver runs ``python -m anna_backend.entrypoints.pipeline_driver --run-id N --attempt A`` in a new
session (so its process group holds it and all its domain workers), writes to ``runs/<id>/driver.log``,
and gets ``PR_SET_PDEATHSIG = SIGKILL`` so it dies with the server thread that started it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from anna_backend.adapters.artifacts import tail
from anna_backend.domain.errors import Conflict
from anna_backend.domain.model import Run
from anna_backend.service_layer.ports import Builder, DriverExit, ModelConfigRepo, Runner
from anna_backend.settings import Settings

log = logging.getLogger(__name__)

DRIVER_MODULE = "anna_backend.entrypoints.pipeline_driver"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform == "linux" \
    else None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it ends (Linux only)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LocalBuilder(Builder):
    """Embedded mode builds nothing: the run's tagged commit is the build. Verifies the tag exists."""

    def __init__(self, model_config: ModelConfigRepo) -> None:
        self.model_config = model_config

    def build(self, run: Run) -> str:
        commit = self.model_config.tag_commit(run.git_tag or f"run/{run.id}")
        if run.git_commit and run.git_commit != commit:
            raise Conflict(f"tag {run.git_tag} points to {commit}, but run {run.id} recorded "
                           f"{run.git_commit}")
        return commit


def driver_command_line(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return None
    if state == "Z":
        return None
    return [a.decode(errors="replace") for a in argv if a]


def is_driver_of(pid: int, run_id: int) -> bool:
    """Whether ``pid`` is a live pipeline driver of run ``run_id`` (guards against a reused pid)."""
    argv = driver_command_line(pid)
    if not argv or DRIVER_MODULE not in argv:
        return False
    try:
        return argv[argv.index("--run-id") + 1] == str(run_id)
    except (ValueError, IndexError):
        return False


@dataclass
class _Driver:
    run_id: int
    attempt: int
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalRunner(Runner):
    def __init__(self, settings: Settings, *, python: str = sys.executable,
                 kill_wait_s: float = 10.0) -> None:
        self.settings = settings
        self.python = python
        self.kill_wait_s = kill_wait_s
        self._drivers: dict[int, _Driver] = {}
        self._lock = threading.Lock()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "ANNA_ADMIN_PASSWORD"}
        env.update(self.settings.as_env())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, run: Run) -> int | None:
        assert run.id is not None
        run_dir = self.settings.runs_dir / str(run.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "driver.log"
        command = [self.python, "-m", DRIVER_MODULE, "--run-id", str(run.id), "--attempt", str(run.attempt)]
        # The driver writes to its own copy of the descriptor: this process keeps none open per run.
        with open(log_path, "ab") as log_file:
            log_file.write(f"--- attempt {run.attempt} ---\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=run_dir,
                env=self._env(), start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        with self._lock:
            self._drivers[run.id] = _Driver(run.id, run.attempt, process, log_path)
        log.info("run %s: driver started (pid %s), log %s", run.id, process.pid, log_path)
        return process.pid

    def exited(self) -> list[DriverExit]:
        ended = []
        with self._lock:
            for run_id, driver in list(self._drivers.items()):
                code = driver.process.poll()
                if code is None:
                    continue
                del self._drivers[run_id]
                ended.append(DriverExit(run_id=run_id, attempt=driver.attempt, returncode=code,
                                        log_tail=tail(driver.log_path, lines=30)))
        return ended

    def is_alive(self, run: Run) -> bool:
        assert run.id is not None
        with self._lock:
            driver = self._drivers.get(run.id)
        if driver is not None and driver.process.poll() is None:
            return True
        return run.pid is not None and is_driver_of(run.pid, run.id)

    def stop(self, run: Run) -> None:
        """SIGKILL the driver's process group (driver and domain workers) and wait until it is gone."""
        assert run.id is not None
        with self._lock:
            driver = self._drivers.get(run.id)
        pid = driver.process.pid if driver is not None else run.pid
        if pid is None or not is_driver_of(pid, run.id):
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # the driver leads its own session, so its group id is its pid
        except ProcessLookupError:
            return
        log.info("run %s: driver process group %s killed", run.id, pid)
        if driver is not None:
            try:
                driver.process.wait(self.kill_wait_s)
            except subprocess.TimeoutExpired:  # stuck in the kernel; the dispatcher reaps it later
                log.warning("run %s: driver %s still there %.0f s after SIGKILL", run.id, pid,
                            self.kill_wait_s)
            return
        deadline = time.monotonic() + self.kill_wait_s
        while time.monotonic() < deadline and driver_command_line(pid) is not None:
            time.sleep(0.05)
