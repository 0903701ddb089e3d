"""Security on a real server over real sockets: HTTPS with a self-signed certificate, API keys
end to end, keys absent from the server log, and the refusal to listen on a network without keys."""

import json
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.support.server import REPO, Server, free_port

ADMIN, READER = "admin-secret-key-0123456789", "reader-secret-key-0123456789"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make a test certificate (Debian: apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_with_keys_end_to_end_and_no_key_in_the_log(tmp_path, certificate):
    keys = [{"key": ADMIN, "role": "admin", "name": "ops"}, {"key": READER, "role": "read", "name": "app"}]
    log = tmp_path / "server.log"
    env = {"VECNEST_API_KEYS": json.dumps(keys)}
    with Server(tmp_path / "data", env=env, log=log, tls=certificate, log_level="debug") as server:
        assert server.url.startswith("https://")
        c = server.client
        admin, reader = {"Authorization": f"Bearer {ADMIN}"}, {"api-key": READER}
        r = c.post("/v1/collections", json={"name": "kb"}, headers=admin)
        assert r.status_code == 201, r.text
        docs = [{"id": "cat", "text": "a small domesticated feline"}, {"id": "oak", "text": "a large tree"}]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}, headers=admin).status_code == 200
        r = c.post("/v1/collections/kb/search", json={"query": "kitten", "k": 1}, headers=reader)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "cat"
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}, headers=reader).status_code == 403
        assert c.delete("/v1/collections/kb", headers={"api-key": READER + "x"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # and a client that does not trust the certificate refuses it
            httpx.get(f"{server.url}/healthz", timeout=5)
    text = log.read_text()
    assert "401" in text and "key app (read)" in text  # the refusals are logged, by key name
    for secret in (ADMIN, READER, READER + "x"):
        assert secret not in text


def test_serve_refuses_a_network_address_without_keys(tmp_path):
    cmd = [sys.executable, "-m", "service", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    r = subprocess.run(
        [*cmd, "--data-dir", str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "refusing to start" in r.stderr and "VECNEST_API_KEYS" in r.stderr
    assert not (tmp_path / "data").exists()
