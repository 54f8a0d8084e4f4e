"""Shared helpers for the operations checks: paths, tool lookup, chart rendering."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mtls-gateway"
DEPLOY = ROOT / "deploy"

# The metric names the gateway exposes (src/metrics); dashboards and alerts may use no others.
METRICS = {
    "mtls_gateway_requests_total",
    "mtls_gateway_request_duration_seconds",
    "mtls_gateway_upstream_handshake_failures_total",
    "mtls_gateway_upstream_connections_total",
    "mtls_gateway_certificate_expiry_timestamp_seconds",
    "mtls_gateway_snapshot_revision",
    "mtls_gateway_snapshot_last_success_timestamp_seconds",
    "mtls_gateway_snapshot_age_seconds",
    "mtls_gateway_snapshot_mappings",
    "mtls_gateway_snapshot_skipped",
    "mtls_gateway_snapshot_refresh_failures_total",
    "mtls_gateway_store_calls_total",
    "mtls_gateway_store_call_duration_seconds",
    "mtls_gateway_throttled_total",
    "mtls_gateway_auth_failures_total",
    "mtls_gateway_build_info",
}
HISTOGRAMS = {"mtls_gateway_request_duration_seconds", "mtls_gateway_store_call_duration_seconds"}
# Series names a query may select: the metrics, and a histogram's _bucket, _sum and _count.
SERIES = METRICS | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}


def tool(name: str) -> str:
    """A command from the project venv (next to this Python) or else from PATH; fails the test
    with the install hint when it is missing (`make test-deps` installs every one)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run `make test-deps`")
    return found


def gateway_binary() -> Path | None:
    """The gateway built by cargo (`make test` builds it before the ops tests), if any."""
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "mtls-gateway"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def render(values: dict | None = None) -> dict[str, list[dict]]:
    """Render the chart offline (Helm 4 SDK, no cluster, no repository) and return the
    manifests by template file name, each parsed from YAML (empty documents dropped)."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name="gw", namespace="payments")
    docs: dict[str, list[dict]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        parsed = [d for d in yaml.safe_load_all(text) if d]
        if parsed:
            docs[Path(path).name] = parsed
    return docs


def by_kind(docs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for parsed in docs.values():
        for doc in parsed:
            kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


# Values for the sidecar render: AppRole, a Vault CA and a token, so the optional branches render.
SIDECAR_VALUES = {
    "sidecar": {"enabled": True},
    "vault": {"auth": {"method": "approle"}, "caSecret": {"name": "vault-ca"}},
    "auth": {
        "tokens": [
            {"id": "billing", "sha256": "ab" * 32, "accounts": ["acme"], "scopes": ["forward"]}
        ]
    },
}
