"""The command line: the console script and `python -m service` parse the same flags."""

import subprocess
import sys
from pathlib import Path

from tests.support.archives import manifest_with, repacked

SCRIPT = Path(sys.executable).parent / "vecnest"


def run(*args, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env)


def test_console_script_and_module_agree():
    assert SCRIPT.exists(), "pip install -e . declares the vecnest console script"
    a = run(str(SCRIPT), "serve", "--help")
    b = run(sys.executable, "-m", "service", "serve", "--help")
    assert a.returncode == b.returncode == 0
    for flag in ("--host", "--port", "--data-dir"):
        assert flag in a.stdout and flag in b.stdout


def test_bad_flags_and_settings_fail_clearly(tmp_path):
    r = run(str(SCRIPT), "serve", "--port", "eighty")
    assert r.returncode == 2 and "invalid int value" in r.stderr
    r = run(str(SCRIPT), "serve", "--data-dir", str(tmp_path), env={"VECNEST_MAX_K": "0", "PATH": "/usr/bin"})
    assert r.returncode == 2 and "max_k" in r.stderr


def test_backup_and_restore_commands_round_trip_a_data_directory(tmp_path, glosses):
    from index import Catalog, HnswParams, Manifest, NewDocument, Query

    _, X = glosses
    source = Catalog(str(tmp_path / "a"))
    c = source.create(Manifest(name="kb", dim=384, metric="cosine", hnsw=HnswParams(), created_at="t"))
    c.upsert([NewDocument(id=f"d{i}", vector=X[i]) for i in range(500)])
    expected = [[m.id for m in row] for row in c.search(Query(X[2900:2910], 5)).matches]
    r = run(str(SCRIPT), "backup", str(tmp_path / "out"), "--data-dir", str(tmp_path / "a"))
    assert r.returncode == 1 and "in use by another process" in r.stderr  # a running server holds it
    source.close()
    r = run(str(SCRIPT), "backup", str(tmp_path / "out"), "--data-dir", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    (archive,) = (tmp_path / "out").glob("kb-*.tar")
    r = run(str(SCRIPT), "restore", str(archive), "--data-dir", str(tmp_path / "b"), "--collection", "copy")
    assert r.returncode == 0 and "500 documents" in r.stdout, r.stderr
    target = Catalog(str(tmp_path / "b"))
    target.open_all()
    assert [[m.id for m in row] for row in target.get("copy").search(Query(X[2900:2910], 5)).matches] == expected
    target.close()
    # the source again, 200 documents more: its archive must not replace "copy" unless asked to
    source = Catalog(str(tmp_path / "a"))
    source.open_all()
    source.get("kb").upsert([NewDocument(id=f"e{i}", vector=X[i]) for i in range(200)])
    source.close()
    run(str(SCRIPT), "backup", str(tmp_path / "more"), "--data-dir", str(tmp_path / "a"))
    (newer,) = (tmp_path / "more").glob("kb-*.tar")
    r = run(str(SCRIPT), "restore", str(newer), "--data-dir", str(tmp_path / "b"), "--collection", "copy")
    assert r.returncode == 1 and "already exists" in r.stderr, (r.stdout, r.stderr)
    r = run(str(SCRIPT), "restore", str(newer), "--data-dir", str(tmp_path / "b"), "--collection", "copy", "--replace")
    assert r.returncode == 0 and "700 documents" in r.stdout, r.stderr
    good = archive.read_bytes()
    archive.write_bytes(repacked(good, manifest_with(encoder={"model": "all-MiniLM-L6-v2"})))  # no dim
    r = run(str(SCRIPT), "restore", str(archive), "--data-dir", str(tmp_path / "b"), "--collection", "copy2")
    assert r.returncode == 1 and "encoder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    archive.write_bytes(good[:1000])
    r = run(str(SCRIPT), "restore", str(archive), "--data-dir", str(tmp_path / "b"), "--collection", "copy2")
    assert r.returncode == 1 and "not a valid vecnest backup archive" in r.stderr
