"""Static checks of the deployment files: they must agree with each other and with the code."""

import re
from pathlib import Path

import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_reference_real_files_and_ports():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"vecnest", "prometheus"} <= set(services)
    assert (REPO / services["vecnest"]["build"] / "Dockerfile").exists()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), source
            else:
                assert source in compose["volumes"], source
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["vecnest:8000"]


def test_dockerfile_pins_cpu_torch_runs_non_root_and_checks_health():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "-c constraints.txt" in dockerfile
    assert "USER vecnest" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "VECNEST_PORT=8000" in dockerfile and "VECNEST_DATA_DIR=/data" in dockerfile
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints


def test_env_variables_in_readme_are_real_settings():
    readme = (REPO / "README.md").read_text()
    fields = {f"VECNEST_{name.upper()}" for name in Settings.model_fields} | {"VECNEST_SHARED_DATA"}  # bench/tests
    mentioned = set(re.findall(r"`(VECNEST_[A-Z_]+)`", readme))
    assert mentioned and mentioned <= fields, mentioned - fields


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"] and "\nmake test\n" in readme
