"""The alerting rules: promtool accepts them, their unit tests pass, each alert has a unit test,
and they use only the gateway's metric names."""

from __future__ import annotations

import re
import subprocess

import yaml

from conftest import DEPLOY, SERIES, tool

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"

EXPECTED_ALERTS = {
    "MtlsGatewayCertificateExpiresSoon": "warning",
    "MtlsGatewayCertificateExpiresVerySoon": "critical",
    "MtlsGatewaySnapshotRefreshFailing": "warning",
    "MtlsGatewaySnapshotStale": "critical",
    "MtlsGatewayHandshakeFailuresRising": "warning",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120,
        cwd=RULES.parent,
    )


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_check_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_rule_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_and_severities():
    assert {r["alert"]: r["labels"]["severity"] for r in rules()} == EXPECTED_ALERTS


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(EXPECTED_ALERTS), "every alert has a case where it fires"
    # The critical expiry alert is quiet in the warning case's input (a 10-day certificate).
    assert set(EXPECTED_ALERTS) - {"MtlsGatewayCertificateExpiresVerySoon"} <= quiet


def test_thresholds():
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert "14 * 86400" in exprs["MtlsGatewayCertificateExpiresSoon"]
    assert "3 * 86400" in exprs["MtlsGatewayCertificateExpiresVerySoon"]
    assert "increase(mtls_gateway_snapshot_refresh_failures_total[10m]) > 0" in exprs[
        "MtlsGatewaySnapshotRefreshFailing"]
    assert exprs["MtlsGatewaySnapshotStale"].strip() == "mtls_gateway_snapshot_age_seconds > 600"
    assert "by (reason)" in exprs["MtlsGatewayHandshakeFailuresRising"]


def test_only_known_metrics():
    for rule in rules():
        for name in re.findall(r"\bmtls_gateway_\w+", rule["expr"]):
            assert name in SERIES, f"{rule['alert']}: unknown metric {name}"
