"""The Grafana dashboard: valid JSON, a panel for each thing operators watch, every query uses
only the gateway's metric names, and every query is valid PromQL (checked by promtool)."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from conftest import DEPLOY, METRICS, SERIES, tool

DASHBOARD = DEPLOY / "grafana" / "mtls-gateway.json"

# Words a PromQL expression may contain besides series names: functions, aggregations,
# keywords, and the Grafana variables.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "by", "without", "rate",
    "increase", "irate", "histogram_quantile", "time", "sort", "sort_desc", "and", "or",
    "unless", "on", "ignoring", "group_left", "group_right", "label_values", "offset",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def exprs(d: dict) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p.get("targets", []) if "expr" in t]


def words_outside_selectors(expr: str) -> set[str]:
    """Identifiers in a query after removing strings, label matchers, label lists of by/without,
    range selectors and Grafana variables: what is left must be functions or series names."""
    e = re.sub(r'"[^"]*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(by|without)\s*\([^)]*\)", r"\1", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\$\w+", "", e)
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e))


def test_loads_and_is_a_dashboard():
    d = dashboard()
    assert d["title"] == "mtls-gateway" and d["uid"] == "mtls-gateway"
    assert d["schemaVersion"] >= 30
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels(d):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24


def test_every_query_uses_only_known_metrics():
    d = dashboard()
    queries = exprs(d)
    assert queries
    for expr in queries:
        for word in words_outside_selectors(expr):
            assert word in PROMQL_WORDS or word in SERIES, f"{word!r} in {expr}"
    templated = [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    for expr in templated:
        for word in words_outside_selectors(expr):
            assert word in PROMQL_WORDS or word in SERIES or word == "instance", expr


def test_covers_the_metrics():
    used = {m for e in exprs(dashboard()) for m in re.findall(r"\bmtls_gateway_\w+", e)}
    used = {re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(("_bucket", "_sum", "_count"))
            and re.sub(r"_(bucket|sum|count)$", "", m) in METRICS else m for m in used}
    assert used == METRICS


def test_panels_operators_need():
    titles = " | ".join(p["title"].lower() for p in panels(dashboard()))
    for needed in ("requests by outcome", "p50", "p99", "handshake failures by reason",
                   "reused vs new", "certificate expiry", "snapshot age", "snapshot revision",
                   "store calls", "throttled", "authentication failures"):
        assert needed in titles, needed


def test_queries_are_valid_promql(tmp_path):
    """Every query, with the Grafana variables filled in, as a recording rule: promtool parses
    each expression and fails on a syntax error."""
    group = {"name": "dashboard", "rules": []}
    for i, expr in enumerate(exprs(dashboard())):
        concrete = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        group["rules"].append({"record": f"dashboard:query{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = subprocess.run([tool("promtool"), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
