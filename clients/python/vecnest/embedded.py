"""The engine in this process: `Client(path=...)` runs the very app `vecnest serve` runs (the
server package, `pip install vecnest`), served by uvicorn on a Unix socket in a private
temporary folder, on a background thread. Requests travel as HTTP over that socket, so an
embedded client behaves exactly as a remote one (validation, errors, limits), and no TCP port
is opened. `path=":memory:"` puts the data in a temporary folder removed at `close()`.
"""

import os
import shutil
import tempfile
import threading
import time
from typing import Any

import httpx

STARTUP_TIMEOUT_S = 300.0  # the first start loads the model


class EmbeddedServer:
    def __init__(self, path: str, settings: dict[str, Any]):
        try:
            import uvicorn

            from service.app import create_app
            from service.settings import Settings
        except ImportError as exc:
            raise ImportError(
                "Client(path=...) runs the vecnest server in this process: install it (pip install vecnest)"
            ) from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._folder = tempfile.mkdtemp(prefix="vecnest-")  # short: a socket path has at most 107 bytes
        self.socket = os.path.join(self._folder, "api.sock")
        data_dir = os.path.join(self._folder, "data") if path == ":memory:" else path
        self._failure: list[str] = []
        app = create_app(Settings(data_dir=data_dir, **settings), on_fatal=self._failure.append)
        config = uvicorn.Config(app, uds=self.socket, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="vecnest-embedded", daemon=True)
        self._thread.start()
        self._wait_started()

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._failure or not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the embedded vecnest did not start: {self._failure or 'see the log above'}")
            time.sleep(0.02)

    def transport(self) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(uds=self.socket)

    def async_transport(self) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(uds=self.socket)

    def close(self) -> None:
        """Stop serving (what is in flight finishes; collections are snapshotted and closed)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        shutil.rmtree(self._folder, ignore_errors=True)
