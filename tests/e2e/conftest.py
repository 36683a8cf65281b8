"""Black-box fixtures for the embedded mode: tiny demo data and real `anna serve` processes.

A server that does not come up fails the test with its log; nothing here skips.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_PASSWORD = "e2e-admin-secret"
# Tiny models: every run trains in seconds on two cores.
TINY_PARAMS: dict[str, Any] = {"default": {"hidden": 8, "max_epochs": 1, "max_len": 32, "search_budget_s": 0}}
DEMO_CLIENTS = 500
STARTUP_TIMEOUT_S = 90.0
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anna_command(*args: str) -> list[str]:
    """`anna ...` from this checkout: the module, run from the repository root.

    (Not the console script: an editable install made before a package had its ``__init__.py`` maps it as
    a namespace package, which would test the environment rather than the code.)
    """
    return [sys.executable, "-m", "anna_backend.entrypoints.cli", *args]


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (from /proc), or None if it is gone or a zombie.

    Comparing start times tells a live process from a new one that reuses the pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """All live descendants of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Server:
    """One `anna serve` process on a data directory; restartable on the same port and data."""

    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _strays: dict[int, int | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANNA_")}
        env.update(
            ANNA_DATA_DIR=str(self.data_dir),
            ANNA_ADMIN_PASSWORD=ADMIN_PASSWORD,
            ANNA_MAX_CONCURRENT_RUNS="2",
            ANNA_MIN_SAMPLE_ROWS="20",
            ANNA_MIN_POSITIVES="5",
            ANNA_DISPATCH_INTERVAL_S="0.2",
            ANNA_DEVICE="cpu",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            command = anna_command("serve", "--host", "127.0.0.1", "--port", str(self.port))
            log.write(f"\n===== starting {' '.join(command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`anna serve` exited with {self.proc.returncode} at start-up\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(
            f"`anna serve` did not answer /health within {STARTUP_TIMEOUT_S:.0f} s\n{self.log_tail()}"
        )

    def kill9(self) -> None:
        """Crash the server process alone, as `kill -9` would; its drivers are the backend's business."""
        assert self.proc is not None
        self._remember_descendants()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """Stop the server gracefully, then make sure nothing it started outlives the test."""
        if self.proc is not None:
            self._remember_descendants()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            self.proc = None
        for pid, started in self._strays.items():
            if started is not None and process_start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def driver_processes(self, run_id: int) -> dict[int, tuple[int | None, str]]:
        """The run's driver and all its workers: pid -> (start time, command line)."""
        assert self.proc is not None
        drivers = [
            pid
            for pid in descendants(self.proc.pid)
            if "pipeline_driver" in process_cmdline(pid)
            and f"--run-id {run_id} " in process_cmdline(pid) + " "
        ]
        pids = drivers + [child for pid in drivers for child in descendants(pid)]
        return {pid: (process_start_time(pid), process_cmdline(pid)) for pid in pids}

    @staticmethod
    def still_alive(snapshot: dict[int, tuple[int | None, str]]) -> dict[int, str]:
        """The processes of an earlier snapshot that still run (same pid and same start time)."""
        return {
            pid: cmd
            for pid, (start, cmd) in snapshot.items()
            if start is not None and process_start_time(pid) == start
        }

    def _remember_descendants(self) -> None:
        assert self.proc is not None
        for pid in descendants(self.proc.pid):
            self._strays.setdefault(pid, process_start_time(pid))

    def cli(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `anna ...` as a user would, against this server."""
        env = {
            **os.environ,
            "ANNA_TOKEN": token,
            "ANNA_URL": self.url,
            "ANNA_CONFIG_DIR": str(self.log_path.parent),
        }
        return subprocess.run(
            anna_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=180
        )

    def log_tail(self, lines: int = 150) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        # Successful polls say nothing; leave them out so the lines that matter fit.
        kept = [line for line in text.splitlines() if not re.search(r'"GET /\S* HTTP/[\d.]+" 200', line)]
        return (
            f"----- server log ({self.log_path}), last {lines} lines without GET polls -----\n"
            + "\n".join(kept[-lines:])
        )


class Api:
    """A logged-in HTTP client; ``expect`` fails with the body and the server log on a wrong status."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=120)
        response = self.http.post("/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD})
        self.expect(response, 200)
        self.token = response.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def expect(self, response: httpx.Response, status: int) -> Any:
        if response.status_code != status:
            pytest.fail(
                f"{response.request.method} {response.request.url} answered {response.status_code}, "
                f"expected {status}: {response.text[:2000]}\n{self.server.log_tail(60)}"
            )
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def get(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        return self.expect(self.http.get(path, **kwargs), status)

    def post(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        return self.expect(self.http.post(path, **kwargs), status)

    def create_task(self, name: str, domains: list[str] | None = None, task_type: str = "binary") -> Any:
        body: dict[str, Any] = {"name": name, "task_type": task_type}
        if domains is not None:
            body["domains"] = domains
        return self.post("/tasks", 201, json=body)

    def upload(self, task: str, path: Path, status: int = 201) -> Any:
        with path.open("rb") as f:
            return self.post(f"/tasks/{task}/samples", status, files={"file": (path.name, f)})

    def train(self, task: str, *, params: dict[str, Any] | None = None, seed: int = 0) -> Any:
        return self.post(f"/tasks/{task}/runs", 201, json={"params": params or TINY_PARAMS, "seed": seed})

    def wait_finished(self, run_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.get(f"/runs/{run_id}")
            if run["state"] in ("succeeded", "failed", "cancelled"):
                return run
            time.sleep(0.5)
        pytest.fail(
            f"run {run_id} did not finish within {timeout:.0f} s; last seen {run.get('state')}, "
            f"steps {[(s['name'], s['state']) for s in run.get('steps') or []]}\n{self.server.log_tail()}"
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny demo data, generated once per session: marts and example samples."""
    from anna_models.demo_data import generate_demo

    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo(root, clients=DEMO_CLIENTS, seed=1)
    assert (root / "demo" / "samples" / "default_12m.csv").is_file(), sorted(p.name for p in root.rglob("*"))
    return root


def fresh_data_dir(demo_root: Path, where: Path) -> Path:
    """A data directory holding a copy of the demo marts and samples, and nothing else."""
    data_dir = where / "data"
    shutil.copytree(demo_root, data_dir)
    return data_dir


@pytest.fixture(scope="module")
def server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running server shared by the tests of a module."""
    where = tmp_path_factory.mktemp("server")
    srv = Server(data_dir=fresh_data_dir(demo_root, where), log_path=where / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_server(demo_root: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, not started yet: a fresh installation, free to crash and restart."""
    srv = Server(data_dir=fresh_data_dir(demo_root, tmp_path), log_path=tmp_path / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[Api]:
    client = Api(server)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_api() -> Callable[[Server], Api]:
    """Log in to a server (again, e.g. after a restart)."""
    return Api


@pytest.fixture
def tiny_params() -> dict[str, Any]:
    return {"default": dict(TINY_PARAMS["default"])}
