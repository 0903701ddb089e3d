"""Static checks of the deployment files: they must agree with each other and with the code."""

import json
import os
import re
import runpy
from pathlib import Path

import jsonschema
import pytest
import yaml
from compose_spec import PyCompose

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))


def test_compose_file_is_valid_compose_spec():
    """The compose_spec parser (a full Compose Specification implementation) accepts the file,
    and rejects a file with one mistake in it, so this check can fail."""
    text = (REPO / "docker-compose.yml").read_text()
    assert PyCompose.from_yaml(text).service_names() == ["vecnest", "prometheus", "grafana"]
    with pytest.raises(ValueError):
        PyCompose.from_yaml(text.replace("stop_grace_period:", "stop_grace_periods:"))


def test_compose_services_reference_real_files_and_ports():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"vecnest", "prometheus", "grafana"} <= set(services)
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
    ports = [p for service in services.values() for p in service.get("ports", [])]
    assert len(ports) == len(set(ports)) and all(p.startswith("127.0.0.1:") for p in ports)
    env = services["vecnest"]["environment"]
    assert set(env) <= {f"VECNEST_{name.upper()}" for name in Settings.model_fields}
    # Grafana reads the provisioning that points at the Prometheus service and the dashboards folder
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "vecnest-prometheus"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/vecnest.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_validates_and_uses_the_provisioned_datasource(path):
    dashboard = json.loads(path.read_text())
    schema = json.loads((REPO / "tests/schemas/grafana-dashboard.schema.json").read_text())
    jsonschema.validate(dashboard, schema)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "vecnest-prometheus", p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, (p["title"], used)
    broken = {**dashboard, "panels": [{**panels[1], "gridPos": {"h": 8, "w": 30, "x": 0, "y": 0}}]}
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail
        jsonschema.validate(broken, schema)


def test_dashboard_json_is_what_the_generator_writes():
    generated = runpy.run_path(str(REPO / "deploy/grafana/dashboard.py"))["dashboard"]()
    assert json.loads((REPO / "deploy/grafana/dashboards/vecnest.json").read_text()) == generated


def test_dockerfile_pins_cpu_torch_runs_non_root_and_checks_health():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "-c constraints.txt" in dockerfile
    # the container is healthy once ready: a server whose collections are still loading (or that could
    # not start) is not
    assert (
        "USER vecnest" in dockerfile
        and "HEALTHCHECK" in dockerfile
        and 'CMD ["vecnest", "health", "--ready"]' in dockerfile
    )
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
    ci = [
        line
        for line in (REPO / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"] and "\nmake test\n" in readme


def test_compose_requires_an_admin_key_and_a_grafana_password(monkeypatch):
    from service.auth import unauthenticated_exposure

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert "${GRAFANA_ADMIN_PASSWORD:?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    env = services["vecnest"]["environment"]
    assert "${VECNEST_ADMIN_KEY:?" in env["VECNEST_API_KEYS"]  # compose stops when it is not set
    secret = "compose-admin-key-0123456789"
    for key, value in env.items():  # as compose substitutes them, in the container's settings
        monkeypatch.setenv(key, re.sub(r"\$\{VECNEST_ADMIN_KEY:\?[^}]*\}", secret, str(value)))
    monkeypatch.setenv("VECNEST_HOST", "0.0.0.0")  # the Dockerfile's
    settings = Settings()
    assert [(k.role, k.key.get_secret_value()) for k in settings.api_keys] == [("admin", secret)]
    assert unauthenticated_exposure(settings) is None and "vecnest" in settings.allowed_hosts


# -- past one machine: deploy/scale-out (compose) and deploy/kubernetes ---------------------------
SCALE_OUT = REPO / "deploy/scale-out/docker-compose.yml"


def _settings_from(env: dict, monkeypatch) -> Settings:
    """The settings a container gets from `env`, secrets substituted as compose or Kubernetes would."""
    for key in list(os.environ):
        if key.startswith("VECNEST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, re.sub(r"\$\{(\w+):\?[^}]*\}", "secret-value-0123456789abcdef", str(value)))
    monkeypatch.setenv("VECNEST_HOST", "0.0.0.0")  # the Dockerfile's
    return Settings()


def test_scale_out_compose_file(monkeypatch):
    text = SCALE_OUT.read_text()
    compose = PyCompose.from_yaml(text)
    assert sorted(compose.service_names()) == sorted(
        ["qdrant-1", "qdrant-2", "qdrant-3", "vecnest-1", "vecnest-2", "vecnest-maintenance", "prometheus", "grafana"]
    )
    with pytest.raises(ValueError):
        PyCompose.from_yaml(text.replace("restart: unless-stopped", "restarts: unless-stopped", 1))
    services = yaml.safe_load(text)["services"]
    roles = {}
    for name in ("vecnest-1", "vecnest-2", "vecnest-maintenance"):
        env = services[name]["environment"]
        assert set(env) <= {f"VECNEST_{n.upper()}" for n in Settings.model_fields}
        settings = _settings_from(env, monkeypatch)
        assert settings.backend == "qdrant" and settings.qdrant_url == "http://qdrant-1:6333"
        assert settings.qdrant_write_consistency <= settings.qdrant_replication_factor <= 3
        roles[name] = settings.role
    assert roles == {"vecnest-1": "serve", "vecnest-2": "serve", "vecnest-maintenance": "maintenance"}
    prometheus = yaml.safe_load((REPO / "deploy/scale-out/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:8000" for name in roles)
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (SCALE_OUT.parent / source).exists() if source.startswith(".") else True, source


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((REPO / "deploy/kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_validate_against_the_kubernetes_schema():
    import kubernetes_validate

    docs = _manifests()
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "Deployment", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    broken = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMap": {"name": "x"}}]
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_kubernetes_topology_is_consistent(monkeypatch):
    docs = _manifests()
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = by_kind["Deployment"] + by_kind["StatefulSet"]
    for w in workloads:  # every selector selects its own pods
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind["Service"]:
        assert any(
            service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in workloads
        ), service["metadata"]["name"]
    (qdrant,) = by_kind["StatefulSet"]
    (config,) = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "vecnest-config"]
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    maintenance = deployments["vecnest-maintenance"]
    assert maintenance["spec"]["replicas"] == 1 and maintenance["spec"]["strategy"]["type"] == "Recreate"
    assert deployments["vecnest"]["spec"]["replicas"] >= 2
    for name, role in (("vecnest", "serve"), ("vecnest-maintenance", "maintenance")):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["vecnest", "serve", "--role", role]
        env = {**config["data"], **{e["name"]: "secret-from-the-secret-0123456789" for e in container["env"]}}
        settings = _settings_from({k: v for k, v in env.items() if k != "VECNEST_API_KEYS"}, monkeypatch)
        assert settings.backend == "qdrant" and settings.qdrant_url == "http://qdrant:6333"
        assert settings.qdrant_write_consistency <= settings.qdrant_replication_factor <= qdrant["spec"]["replicas"]


def test_kubernetes_monitoring_finds_every_vecnest_pod_and_feeds_the_dashboard():
    docs = _manifests()
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    headless = named[("Service", "vecnest-metrics")]["spec"]
    assert headless["clusterIP"] == "None" and headless["selector"] == {"app": "vecnest"}
    for deployment in ("vecnest", "vecnest-maintenance"):  # both roles are scraped
        labels = named[("Deployment", deployment)]["spec"]["template"]["metadata"]["labels"]
        assert headless["selector"].items() <= labels.items()
    prometheus = yaml.safe_load(named[("ConfigMap", "prometheus-config")]["data"]["prometheus.yml"])
    (sd,) = prometheus["scrape_configs"][0]["dns_sd_configs"]
    assert sd["names"] == ["vecnest-metrics"] and sd["port"] == headless["ports"][0]["port"] == 8000
    provisioning = named[("ConfigMap", "grafana-provisioning")]["data"]
    (source,) = yaml.safe_load(provisioning["datasource.yml"])["datasources"]
    assert source["url"] == "http://prometheus:9090" and ("Service", "prometheus") in named
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/vecnest.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if isinstance(p.get("datasource"), dict)}
    assert uids == {source["uid"]}
    grafana = named[("Deployment", "grafana")]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in grafana["containers"][0]["volumeMounts"]}
    home = next(
        e["value"] for e in grafana["containers"][0]["env"] if e["name"] == "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    )
    assert home.startswith("/etc/grafana/dashboards/") and "/etc/grafana/dashboards" in mounts
    # upgrade commands have a way to the maintenance process
    maintenance = named[("Service", "vecnest-maintenance")]["spec"]["selector"]
    assert maintenance == {"app": "vecnest", "role": "maintenance"}
