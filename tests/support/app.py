"""The real app in-process (ASGI, lifespan included), with the real model or a model-free one."""

from contextlib import contextmanager

from fastapi.testclient import TestClient

from service.app import create_app
from service.encoders import Encoder, ModelRef
from service.settings import Settings
from tests.support.fake_encoder import FakeEncoder
from tests.support.server import wait_ready


def fake_loader(ref: ModelRef) -> Encoder:
    """Any model as a `FakeEncoder` of its name: 768 dims when the name says so, else 384."""
    return FakeEncoder(ref.name, dim=768 if "768" in ref.name else 384)


@contextmanager
def app_client(settings: Settings, fake: bool = False):
    """A client of the app, ready before the first request; `fake`: no model is loaded, every
    model is a `FakeEncoder`."""
    app = create_app(settings, encoder_loader=fake_loader if fake else None)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        wait_ready(client.get)
        yield client
