"""A vecnest server as a child process on 127.0.0.1, for benchmarks and tests (stopped by PID)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(get, timeout: float = 300.0, alive=lambda: True) -> None:
    """Poll `/readyz` through `get(path)` until it answers 200; fail at once if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise RuntimeError("vecnest exited before it became ready (see its log)")
        time.sleep(0.1)
    raise TimeoutError("vecnest did not become ready")


class Server:
    """`python -m service serve` on a free loopback port, with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        log_level: str = "warning",
    ):
        """`tls`: (certificate, key) PEM files: the server speaks HTTPS and the client trusts
        that certificate."""
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.tls = tls
        self.log_level = log_level
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = log or self.data_dir.parent / f"server-{self.port}.log"
        self.preexec = None  # runs in the child before exec (e.g. to lower its resource limits)

    def start(self, wait: bool = True) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            self.log_level,
        ]
        if self.tls is not None:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec
            )
        self.client = httpx.Client(base_url=self.url, timeout=120, verify=str(self.tls[0]) if self.tls else True)
        if wait:
            wait_ready(self.client.get, alive=lambda: self.proc.poll() is None)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=120)
        self.client.close()
        return code

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        return self.kill(signal.SIGTERM)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Prometheus:
    """Debian's `prometheus` binary on a free loopback port, scraping `targets` with the repo's
    scrape config (deploy/prometheus/prometheus.yml, its targets and interval replaced)."""

    CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s"):
        self.workdir = Path(workdir)
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str | None:
        import shutil

        return shutil.which("prometheus")

    def start(self) -> "Prometheus":
        import yaml

        config = yaml.safe_load(self.CONFIG.read_text())
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = self.scrape_interval
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": self.targets}]
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        cmd = [
            self.binary(),
            f"--config.file={path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            "--log.level=warn",
        ]
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def query(self, expr: str) -> dict:
        """Instant query; returns the JSON body (`status`, `data` or `error`)."""
        return self.client.get("/api/v1/query", params={"query": expr}).json()

    def series(self, expr: str) -> list[dict]:
        body = self.query(expr)
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('error')}")
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.series(expr)
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"no series for {expr}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        if self.proc is not None:
            self.client.close()

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
