"""What every layer of the pyramid shares: names, settings, and the `slow` marker on tests/e2e.

- tests/index: the pure library, no torch and no model (vectors made once into tests/data, or the
  model-free `FakeEncoder`);
- tests/service: the ASGI app in-process, with the `FakeEncoder` where the model is not the point;
- tests/e2e: the real model, real server processes, Prometheus: every test there is `slow`.

`pytest -m "not slow"` runs the first two; `make test` runs everything.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from service.settings import Settings

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items):
    for item in items:
        if E2E in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", snapshot_interval_s=3600)


@pytest.fixture(scope="session")
def glosses():
    """3,000 WordNet glosses and their real MiniLM embeddings `(3000, 384)`, made once per
    checkout by a child process and kept in tests/data (this process loads no model; see
    tests/support/vectors.py)."""
    from tests.support import vectors

    return vectors.glosses()


@pytest.fixture(scope="session")
def minilm():
    """The real default model, loaded once for the whole session (only tests that ask for it)."""
    from service.encoders import EncoderRegistry

    registry = EncoderRegistry(Settings())
    return registry.load(registry.resolve(None))
