"""The Railway config files use only documented fields and fit the measured shutdown bounds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.web import GRACEFUL_TIMEOUT_SECONDS
from pipeline.worker import SHUTDOWN_TIMEOUT_MS, STOP_SECONDS

ROOT = Path(__file__).resolve().parents[1]
# docs/research/deploy-semantics.md A2 (Railway's config-as-code reference).
BUILD_FIELDS = {"builder", "buildCommand", "dockerfilePath", "watchPatterns", "railpackVersion"}
DEPLOY_FIELDS = {
    "startCommand", "preDeployCommand", "healthcheckPath", "healthcheckTimeout",
    "multiRegionConfig", "numReplicas", "restartPolicyType", "restartPolicyMaxRetries",
    "cronSchedule", "sleepApplication", "overlapSeconds", "drainingSeconds", "region",
}
WEB, WORKER = ROOT / "railway.json", ROOT / "pipeline" / "railway.json"


@pytest.mark.parametrize("path", [WEB, WORKER], ids=["web", "worker"])
def test_config_uses_only_documented_fields_with_numeric_timings(path: Path) -> None:
    config = json.loads(path.read_text())
    assert set(config) <= {"$schema", "build", "deploy", "environments"}
    assert set(config["build"]) <= BUILD_FIELDS
    assert set(config["deploy"]) <= DEPLOY_FIELDS
    for name in ("overlapSeconds", "drainingSeconds"):
        assert type(config["deploy"][name]) is int
    assert config["deploy"]["restartPolicyType"] in {"ON_FAILURE", "ALWAYS", "NEVER"}


def test_web_migrates_before_deploy_and_gates_traffic_on_readiness() -> None:
    deploy = json.loads(WEB.read_text())["deploy"]
    assert deploy["startCommand"] == "python -m pipeline web"
    assert deploy["preDeployCommand"] == ["python -m pipeline migrate"]
    assert deploy["healthcheckPath"] == "/health/ready"
    assert deploy["drainingSeconds"] > GRACEFUL_TIMEOUT_SECONDS


def test_worker_has_no_health_check_no_migrations_and_drains_longer_than_it_stops() -> None:
    deploy = json.loads(WORKER.read_text())["deploy"]
    assert deploy["startCommand"] == "python -m pipeline worker"
    assert "healthcheckPath" not in deploy and "preDeployCommand" not in deploy
    assert deploy["drainingSeconds"] > SHUTDOWN_TIMEOUT_MS / 1000 + STOP_SECONDS


# --- .railway/railway.ts (Infrastructure as Code) -------------------------------------------

IAC = ROOT / ".railway" / "railway.ts"
# Railway's IaC reference (infrastructure-as-code/reference.md) and the CLI's migrate emitter.
IAC_SERVICE_FIELDS = {
    "source", "build", "start", "healthcheck", "healthcheckTimeout", "replicas", "preDeploy",
    "env", "domains", "volumeMounts",
}
IAC_EXPORTS = {
    "defineRailway", "project", "service", "github", "image", "postgres", "redis", "mysql",
    "mongo", "volume", "bucket", "group", "preserve",
}


def _iac_services() -> dict[str, str]:
    """The text of each `service("name", { ... })` block, by service name."""
    text = IAC.read_text()
    found = {}
    for match in re.finditer(r'service\("([^"]+)",\s*\{', text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found[match.group(1)] = text[match.end() : i - 1]
    return found


def _top_level_keys(block: str) -> set[str]:
    keys, depth = set(), 0
    for line in block.splitlines():
        stripped = line.strip()
        if depth == 0 and (key := re.match(r"(\w+):", stripped)):
            keys.add(key.group(1))
        elif depth == 0 and stripped.startswith("..."):
            keys.add(stripped)
        depth += line.count("{") - line.count("}")
    return keys


def _env(block: str) -> dict[str, str]:
    env = block[block.index("env:") :]
    return dict(re.findall(r"(\w+):\s*([^,\n]+),", env))


def test_iac_imports_only_what_the_sdk_exports_and_defines_both_services() -> None:
    text = IAC.read_text()
    imported = re.search(r"import \{([^}]*)\} from \"railway/iac\"", text)
    assert imported is not None
    assert {name.strip() for name in imported.group(1).split(",")} <= IAC_EXPORTS
    assert "export default defineRailway(" in text
    assert set(_iac_services()) == {"web", "worker"}
    assert re.search(r"resources: \[[^\]]*\bweb\b[^\]]*\bworker\b", text)


@pytest.mark.parametrize("name", ["web", "worker"])
def test_iac_services_use_only_documented_fields(name: str) -> None:
    assert _top_level_keys(_iac_services()[name]) <= IAC_SERVICE_FIELDS


@pytest.mark.parametrize("name,path", [("web", WEB), ("worker", WORKER)])
def test_iac_matches_the_config_file_of_the_same_service(name: str, path: Path) -> None:
    block = _iac_services()[name]
    deploy = json.loads(path.read_text())["deploy"]
    assert f'start: "{deploy["startCommand"]}"' in block
    env = _env(block)
    # Drain and overlap have no IaC field: Railway's service variables carry them.
    assert env["RAILWAY_DEPLOYMENT_DRAINING_SECONDS"] == f'"{deploy["drainingSeconds"]}"'
    assert env["RAILWAY_DEPLOYMENT_OVERLAP_SECONDS"] == f'"{deploy["overlapSeconds"]}"'
    for variable in ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL", "ADMIN_TOKEN"):
        assert variable in IAC.read_text()


def test_iac_migrates_and_gates_on_readiness_on_web_only() -> None:
    services = _iac_services()
    web = json.loads(WEB.read_text())["deploy"]
    assert f'preDeploy: "{web["preDeployCommand"][0]}"' in services["web"]
    assert f'healthcheck: "{web["healthcheckPath"]}"' in services["web"]
    assert "preDeploy" not in services["worker"] and "healthcheck" not in services["worker"]


def test_watch_patterns_are_per_service_and_cover_what_each_runs() -> None:
    web = set(json.loads(WEB.read_text())["build"]["watchPatterns"])
    worker = set(json.loads(WORKER.read_text())["build"]["watchPatterns"])
    assert {"api/**", "migrations/**", "railway.json"} <= web
    assert "api/**" not in worker and "pipeline/railway.json" in worker
    assert {"pipeline/**", "events/**", "projections/**", "pyproject.toml"} <= web & worker
