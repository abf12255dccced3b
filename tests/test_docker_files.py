"""docker/: the image and the stack's files agree with the project (no docker needed here; the end-to-end
test that builds and runs them is docker/test_stack.sh, run by hand)."""
import re
import tomllib
from pathlib import Path

import yaml

from imgexp import gpus

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def test_compose_stack():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert set(services) == {"postgres", "mlflow", "worker", "dashboard"}
    assert services["dashboard"]["profiles"] == ["dashboard"]
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # each trial claims a GPU slot (imgexp.gpus) in a lock folder every worker shares: the /work volume
    worker_env = services["worker"]["environment"]
    assert worker_env[gpus.IDS_ENV] == "${WORKER_GPU_IDS:-}" and "work:/work" in services["worker"]["volumes"]
    assert worker_env[gpus.LOCKS_ENV].startswith("/work/") and services["worker"]["entrypoint"] == ["imgexp"]
    assert "/health" in str(services["mlflow"]["healthcheck"]["test"])
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    for name in ("postgres", "mlflow", "dashboard"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    # no secret in the YAML: every password is ${POSTGRES_PASSWORD} from the env file
    passwords = [v for s in services.values() for k, v in s.get("environment", {}).items() if "PASSWORD" in k]
    assert len(passwords) == 4 and all(v.startswith("${POSTGRES_PASSWORD:?") for v in passwords)


def test_dockerfile_installs_imgexp_with_its_extras():
    text = (DOCKER / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"launchers", "postgres"} <= set(pyproject["project"]["optional-dependencies"])
    assert '"/src[launchers,postgres]"' in text
    assert 'ENTRYPOINT ["imgexp"]' in text and "USER imgexp" in text
    copied = set(re.findall(r"^COPY (\S+) /src/", text, re.M))
    assert set(pyproject["tool"]["setuptools"]["package-dir"].values()) <= copied
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{c}" in ignore or f"!{c}/" in ignore for c in copied)
