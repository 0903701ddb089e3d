"""Test helpers: the server process from bench.harness, and an in-process app client."""

from contextlib import contextmanager

from fastapi.testclient import TestClient

from bench.harness import Server, free_port, wait_ready
from service.app import create_app
from service.settings import Settings

__all__ = ["Server", "app_client", "free_port", "wait_ready"]


@contextmanager
def app_client(settings: Settings):
    """The real app in-process (lifespan included), ready before the first test request."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client.get)
        yield client
