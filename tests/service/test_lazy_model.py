"""The default model is loaded when a collection or request first needs it: a server of vectors
only never loads one (unless preload_default_model)."""

from service.settings import Settings
from tests.support.app import app_client


def loaded(client) -> list[str]:
    return [e.id for e in client.app.state.engine.embedder.registry.loaded()]


def test_the_model_loads_on_first_need(tmp_path):
    with app_client(Settings(data_dir=tmp_path / "data"), fake=True) as client:
        assert client.post("/v1/collections", json={"name": "v", "dim": 8}).status_code == 201
        docs = [{"id": "a", "vector": [0.1] * 8}]
        assert client.put("/v1/collections/v/documents", json={"documents": docs}).status_code == 200
        assert client.post("/v1/collections/v/search", json={"vector": [0.1] * 8}).status_code == 200
        assert loaded(client) == []
        assert client.post("/v1/collections", json={"name": "t"}).status_code == 201
        assert loaded(client) == ["all-MiniLM-L6-v2"]
    # Restarted: the text collection needs its model at start-up, the vectors-only one does not.
    with app_client(Settings(data_dir=tmp_path / "data"), fake=True) as client:
        assert loaded(client) == ["all-MiniLM-L6-v2"]


def test_preload(tmp_path):
    with app_client(Settings(data_dir=tmp_path / "data", preload_default_model=True), fake=True) as client:
        assert loaded(client) == ["all-MiniLM-L6-v2"]
    with app_client(Settings(data_dir=tmp_path / "other"), fake=True) as client:
        assert loaded(client) == []
