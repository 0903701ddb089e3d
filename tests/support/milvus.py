"""milvus-lite's gRPC server as a child process on 127.0.0.1: a real shared backend that several
vecnest processes can use at once (stopped by PID)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server import free_port


class MilvusServer:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"milvus-{self.port}.log"

    def start(self, timeout: float = 60.0) -> "MilvusServer":
        exe = shutil.which("milvus-lite", path=os.path.dirname(sys.executable)) or "milvus-lite"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite exited at start-up; see {self.log}")
            try:
                MilvusClient(uri=self.uri, timeout=2).close()
                return self
            except Exception:
                time.sleep(0.2)
        raise TimeoutError(f"milvus-lite did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
