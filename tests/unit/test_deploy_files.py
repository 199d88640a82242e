"""docker-compose.yml, Dockerfile.gpu and .env.example cannot run here (no Docker engine), so
check that they parse and agree with the settings class and the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {name.upper() for name in Settings.model_fields}
EXTERNAL = {"HF_HOME", "HF_TOKEN"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_env_example_lists_exactly_the_settings() -> None:
    keys = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
            if line and not line.startswith("#")}
    assert keys == FIELDS


def test_compose_services_and_settings_agree() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
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


def test_api_image_has_every_module_the_api_imports() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text().split("AS api", 1)[1]
    copied = {src for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for src in line.split()[:-1]}
    code = "import sys, app.main; print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith(('app', 'workers')) and getattr(m, '__file__', None)))"
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    for f in files:
        rel = str(Path(f).relative_to(ROOT))
        assert rel in copied or rel.split("/")[0] in copied, f"the api image lacks {rel}"
