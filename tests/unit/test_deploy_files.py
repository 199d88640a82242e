"""docker-compose.yml, Dockerfile.gpu and .env.example cannot run here (no Docker engine), so
check that they parse and agree with the settings class and the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {name.upper() for name in Settings.model_fields}
EXTERNAL = {"HF_HOME", "HF_TOKEN"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_env_example_lists_exactly_the_settings() -> None:
    keys = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert keys == FIELDS


def test_compose_services_and_settings_agree() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "seaweedfs", "s3-bucket", "prometheus", "grafana"}
    assert {name for name, service in services.items() if "profiles" not in service} == {"redis", "api", "worker"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        unknown = set(env) - FIELDS - EXTERNAL
        assert not unknown, f"{name} sets unknown settings {unknown}"
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert "results:/data/results" in services[name]["volumes"] and env["RESULTS_DIR"] == "/data/results"
        assert "healthcheck" in services[name]
        assert services[name]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert services["api"]["environment"]["API_KEY"].startswith("${API_KEY")
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert any(v.startswith("hf-cache:") for v in services["worker"]["volumes"])
    for path_var in ("MNIST_TIME_CHECKPOINT", "MNIST_CLASS_CHECKPOINT"):
        rel = services["worker"]["environment"][path_var].removeprefix("/app/")
        assert rel == str(getattr(Settings(), path_var.lower()).relative_to(ROOT))


def test_dockerfile_targets_and_copied_paths_exist() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M))
    assert targets == {s["build"]["target"] for s in _compose()["services"].values() if "build" in s}
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), src


def _image_copies(target: str) -> set[str]:
    text = (ROOT / "Dockerfile.gpu").read_text().split(f"AS {target}", 1)[1].split("\nFROM ", 1)[0]
    return {src for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for src in line.split()[:-1]}


def _project_modules(code: str) -> set[str]:
    """Top-level folders of the project files that running ``code`` imports."""
    script = f"import sys; {code}; print('\\n'.join(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)))"
    files = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    tops = {Path(f).relative_to(ROOT).parts[0] for f in files if Path(f).is_relative_to(ROOT)}
    return {top for top in tops if (ROOT / top / "__init__.py").is_file()}


def test_each_image_has_every_package_its_process_imports() -> None:
    assert _project_modules("import app.main") == {"app", "core"} <= _image_copies("api")
    assert (
        _project_modules("import workers.__main__, workers.jobs")
        == {"core", "models", "workers"}
        <= _image_copies("worker")
    )


def test_each_image_installs_its_extra() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert 'pip install -e ".[worker]"' in text.split("AS api")[0]
    assert 'pip install ".[api]"' in text.split("AS api")[1]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(name.startswith(("torch", "diffusers", "transformers")) for name in extras["api"])


def test_a_copy_of_env_example_gives_the_defaults(monkeypatch) -> None:
    """`cp .env.example .env` must change nothing (an empty NAME= is unset, not an empty string)."""
    monkeypatch.chdir(ROOT)
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    example, default = Settings(_env_file=ROOT / ".env.example"), Settings(_env_file=None)
    for name in Settings.model_fields:
        a, b = getattr(example, name), getattr(default, name)
        if isinstance(b, Path):
            a, b = (ROOT / a).resolve(), b.resolve()
        assert a == b, name


def test_compose_s3_profile_serves_results_from_seaweedfs() -> None:
    """The `s3` profile: a SeaweedFS S3 server with real identities, a bucket step, and api and worker pointed at
    it through RESULTS_URL and the standard AWS variables (unset, the folder backend as before)."""
    compose = _compose()
    services = compose["services"]
    weed, bucket = services["seaweedfs"], services["s3-bucket"]
    assert weed["profiles"] == ["s3"] and bucket["profiles"] == ["s3"]
    assert weed["image"].startswith("chrislusf/seaweedfs") and bucket["image"] == weed["image"]
    flags = dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in weed["command"][1:])
    assert weed["command"][0] == "server" and "-s3" in flags
    assert flags["-s3.autoCreateBucket"] == "false" and flags["-master.telemetry"] == "false"
    (mount,) = weed["configs"]
    assert flags["-s3.config"] == mount["target"]
    identities = json.loads(compose["configs"][mount["source"]]["content"])
    (identity,) = identities["identities"]
    assert identity["credentials"] == [
        {"accessKey": "${AWS_ACCESS_KEY_ID:-}", "secretKey": "${AWS_SECRET_ACCESS_KEY:-}"}
    ]
    assert "Admin" not in identity["actions"] and {"Read", "Write", "List"} <= set(identity["actions"])
    assert any(v.endswith(":/data") for v in weed["volumes"]) and "healthcheck" in weed
    step = " ".join(bucket["command"])
    assert "s3.bucket.create" in step and f"-owner {identity['name']}" in step and "-master=seaweedfs:9333" in step
    assert bucket["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert {"RESULTS_URL", "RESULTS_REDIRECT", *(k for k in FIELDS if k.startswith("AWS_"))} <= set(env)
        assert env["RESULTS_URL"] == "${RESULTS_URL:-}"  # unset: the shared results volume, as before
        assert env["AWS_ENDPOINT_URL"] == f"${{AWS_ENDPOINT_URL-http://seaweedfs:{flags['-s3.port']}}}"
        assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"
        ready = services[name]["depends_on"]["s3-bucket"]
        assert ready == {"condition": "service_completed_successfully", "required": False}


def test_settings_accept_the_compose_s3_values(monkeypatch) -> None:
    env = {"RESULTS_URL": "s3://results/jobs", "AWS_ENDPOINT_URL": "http://seaweedfs:8333"}
    env |= {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.results_url == "s3://results/jobs" and settings.aws_endpoint_url == "http://seaweedfs:8333"
    assert settings.aws_secret_access_key is not None and "s3cr3t-value" not in repr(settings)


def test_compose_monitoring_profile_scrapes_api_and_workers_and_provisions_the_dashboard() -> None:
    """The `monitoring` profile: Prometheus scrapes the API's /metrics and each worker's WORKER_METRICS_PORT (every
    replica, by DNS), and Grafana is provisioned with the Prometheus data source and deploy/grafana/dashboard.json."""
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    port = services["worker"]["environment"]["WORKER_METRICS_PORT"]
    assert Settings(worker_metrics_port=port).worker_metrics_port == int(port)
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")}
    config_path = mounts["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config_path}" in prometheus["command"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"]["metrics_path"] == "/metrics" and jobs["api"]["dns_sd_configs"][0]["port"] == 8000
    assert jobs["api"]["dns_sd_configs"][0]["names"] == ["api"]
    assert jobs["worker"]["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": int(port)}
    grafana_mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith("./")}
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    board = grafana_mounts["./deploy/grafana/dashboard.json"]
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert Path(board).parent == Path(providers["providers"][0]["options"]["path"])
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert (
        sources["datasources"][0]["url"] == "http://prometheus:9090"
        and sources["datasources"][0]["type"] == "prometheus"
    )
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())
    assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])
    for name in ("api", "worker"):
        assert services[name]["environment"]["LOG_FORMAT"] == "${LOG_FORMAT:-text}"
