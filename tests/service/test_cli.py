"""The command line: the console script and `python -m service` parse the same flags."""

import subprocess
import sys
from pathlib import Path

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
