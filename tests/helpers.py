"""Test helpers: a real vecnest server process on 127.0.0.1, and an in-process app client."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(get, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("vecnest did not become ready")


@contextmanager
def app_client(settings: Settings):
    """The real app in-process (lifespan included), ready before the first test request."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client.get)
        yield client


class Server:
    """`python -m service serve` as a child process; stopped by PID."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, wait: bool = True) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        if wait:
            wait_ready(self.client.get)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.client.close()
        return code

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        return self.kill(signal.SIGTERM)
