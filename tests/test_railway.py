"""The Railway config files use only documented fields and fit the measured shutdown bounds."""

from __future__ import annotations

import json
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
