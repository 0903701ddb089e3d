"""The service's tests run the real app in-process with the model-free `FakeEncoder`: every model
name loads one (see tests/support/app.py), so the app starts in a second and no torch is needed."""

import pytest

from tests.support.fake_encoder import FakeEncoder


@pytest.fixture(scope="session")
def fake_model() -> FakeEncoder:
    """What the app's default model computes in these tests (the same vectors for the same text)."""
    return FakeEncoder("all-MiniLM-L6-v2")
