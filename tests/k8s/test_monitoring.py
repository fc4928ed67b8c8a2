"""The monitoring component: PodMonitors, alerts and the Grafana dashboard, checked the way the Prometheus
Operator, Prometheus and Grafana will read them.

- The custom resources against the operator's own CRD schemas (tests/k8s/crds.py).
- The rules with `promtool check rules`, and each alert with `promtool test rules`: synthetic series
  in which its SLO is broken make it fire, with exactly the labels routing needs, and series in which it
  holds make nothing fire. promtool comes with the Debian package `prometheus`; without it these fail.
- The dashboard's expressions parsed by promtool too. That every metric and label they name is one the
  services export is checked against a live scrape in tests/e2e/test_dashboard_metrics.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.k8s.crds import crd_errors, load_crd_schemas
from tests.k8s.monitoring import (
    COMPONENT,
    DASHBOARD,
    Names,
    as_promql,
    dashboard_queries,
    names_in,
    panels,
    rule_groups,
)
from tests.k8s.objects import container_ports, labels_match
from tests.k8s.rendering import Manifest, Rendered
from tests.k8s.services import METRICS_PORT, SERVICES

MONITORING = "components/monitoring"
# kubectl's client-side apply copies the object into an annotation of at most 256 KiB.
LAST_APPLIED_LIMIT = 262144
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def monitored(rendered: dict[str, Rendered]) -> list[Rendered]:
    """The renders that include the component (each overlay with it, and with every component)."""
    found = [r for r in rendered.values() if MONITORING in r.name]
    assert {r.name.split(" + ")[0] for r in found} >= {"overlays/dev", "overlays/prod"}
    for render in found:
        assert render.objects, f"{render.name} rendered nothing: {render.errors}"
    return found


@pytest.fixture(scope="module")
def unmonitored(rendered: dict[str, Rendered]) -> list[Rendered]:
    found = [r for r in rendered.values() if MONITORING not in r.name]
    assert found
    return found


@pytest.fixture(scope="module")
def prometheus_rule(monitored: list[Rendered]) -> Manifest:
    (rule,) = monitored[0].all("PrometheusRule")
    return rule


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH; install it with: apt-get install -y prometheus")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, check=False, timeout=120)


def test_the_tokenizer_finds_metric_and_label_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, rpc_method) (rate(a_bucket{namespace="$namespace", '
        'rpc_grpc_status_code=~"OK|by(x)"}[$__rate_interval]))) / on (job) group_left (pod) b_total'
        " * 1e3 > bool 0.5 and sum(rate(c_total[1h] offset 1d)) without (instance) unless d[5m:1m]"
    )
    assert names_in(expr) == Names(
        metrics=frozenset({"a_bucket", "b_total", "c_total", "d"}),
        labels=frozenset({"le", "rpc_method", "namespace", "rpc_grpc_status_code", "job", "pod", "instance"}),
    )
    assert names_in("up == 0").metrics == {"up"}
    assert names_in('sum(rate(x{a="}"}[5m])) by (b)') == Names(frozenset({"x"}), frozenset({"a", "b"}))


# --- the custom resources -------------------------------------------------------------------------


def test_the_monitoring_objects_are_valid_against_the_operators_crds(monitored: list[Rendered]) -> None:
    schemas = load_crd_schemas()
    for render in monitored:
        objects = [o for o in render.objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
        assert sorted(o["kind"] for o in objects) == ["PodMonitor"] * len(SERVICES) + ["PrometheusRule"]
        errors = [f"{render.name}: {e}" for o in objects for e in crd_errors(o, schemas)]
        assert not errors, "\n".join(errors)
        for obj in objects:
            assert obj["metadata"]["namespace"] == render.namespace, obj["metadata"]["name"]


def test_crd_validation_rejects_unknown_fields_wrong_types_and_unknown_kinds() -> None:
    schemas = load_crd_schemas()
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "x", "namespace": "rag"},
        "spec": {"selector": {}, "podMetricEndpoints": [{"port": "metrics"}], "jobLabel": 5},
    }
    errors = " ".join(crd_errors(monitor, schemas))
    assert "'podMetricEndpoints' was unexpected" in errors
    assert "spec.jobLabel: 5 is not of type 'string'" in errors
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {"groups": [{"rules": [{"alert": "A", "expr": "up"}]}]},
    }
    assert "'name' is a required property" in " ".join(crd_errors(rule, schemas))
    unknown = {**rule, "apiVersion": "monitoring.coreos.com/v2"}
    assert "no CRD" in " ".join(crd_errors(unknown, schemas))


# --- scraping ---------------------------------------------------------------------------------------


def _metrics_endpoints(render: Rendered, deployment: Manifest) -> list[Manifest]:
    """The PodMonitor endpoints that scrape this Deployment's pods."""
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return [
        endpoint
        for monitor in render.all("PodMonitor")
        if monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        and not monitor["spec"]["selector"].get("matchExpressions")
        and labels_match(monitor["spec"]["selector"].get("matchLabels", {}), labels)
        for endpoint in monitor["spec"]["podMetricsEndpoints"]
    ]


def test_every_service_is_scraped_once_on_its_metrics_port(monitored: list[Rendered]) -> None:
    for render in monitored:
        for service in SERVICES:
            deployment = render.one("Deployment", service)
            where = f"{render.name}: {service}"
            endpoints = _metrics_endpoints(render, deployment)
            assert len(endpoints) == 1, f"{where}: scraped by {len(endpoints)} endpoints"
            (endpoint,) = endpoints
            assert container_ports(deployment)[endpoint["port"]] == METRICS_PORT, where
            assert endpoint.get("path", "/metrics") == "/metrics", where
        # Only the services: PostgreSQL, the collector and the setup Job serve no such port.
        others = [w for w in render.workloads() if w["metadata"]["name"] not in SERVICES]
        assert others
        for workload in others:
            assert not _metrics_endpoints(render, workload), f"{render.name}: {workload['metadata']['name']}"


def test_the_component_replaces_the_scrape_annotations(
    monitored: list[Rendered], unmonitored: list[Rendered]
) -> None:
    for render in monitored:
        for workload in render.workloads():
            annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
            scrape = [key for key in annotations if key.startswith("prometheus.io/")]
            assert not scrape, f"{render.name}: {workload['metadata']['name']} keeps {scrape}"
    # Without it, the annotations are what Prometheus follows, and they name the same port.
    for render in unmonitored:
        assert not render.all("PodMonitor"), render.name
        for service in SERVICES:
            template = render.one("Deployment", service)["spec"]["template"]
            annotations = template["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/scrape") == "true", f"{render.name}: {service}"
            assert annotations.get("prometheus.io/port") == str(METRICS_PORT), f"{render.name}: {service}"


# --- the dashboard ----------------------------------------------------------------------------------


def test_the_dashboard_is_provisioned_for_grafanas_sidecar(monitored: list[Rendered]) -> None:
    for render in monitored:
        (config_map,) = [
            c for c in render.all("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard")
        ]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == render.namespace
        assert set(config_map["data"]) == {DASHBOARD.name}
        assert json.loads(config_map["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())
        size = len(json.dumps(config_map, separators=(",", ":")).encode())
        assert size < LAST_APPLIED_LIMIT, f"{size} bytes: kubectl apply could not record it"


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "rag-platform"
    every = panels(board)
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Each query picks the chosen data source and namespace, so one dashboard serves every install.
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'namespace="$namespace"' in target["expr"], (panel["title"], target["expr"])
    # Every cell of the 24-column grid holds at most one panel.
    cells: dict[tuple[int, int], str] = {}
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_the_dashboard_covers_what_the_services_measure() -> None:
    used = set().union(*(q.names.metrics for q in dashboard_queries(json.loads(DASHBOARD.read_text()))))
    for prefix in (
        *(f"rag_{service}_rpc_requests_total" for service in SERVICES),
        *(f"rag_{service}_rpc_duration_seconds_bucket" for service in SERVICES),
        *(f"rag_{service}_stage_duration_seconds_bucket" for service in SERVICES),
        "rag_embedder_queue_depth",
        "rag_embedder_batch_size_",
        "rag_embedder_batch_padded_tokens_",
        "rag_embedder_cache_hits_total",
        "rag_embedder_cache_misses_total",
        "rag_gateway_answer_cache_lookups_total",
        "rag_generator_tokens_total",
        "rag_gateway_ingest_documents_total",
        "rag_gateway_ingest_chunks_total",
        "rag_gateway_answers_total",
        "rag_retriever_search_hits_",
    ):
        assert any(name.startswith(prefix) for name in used), f"no panel shows {prefix}"


def test_prometheus_parses_every_dashboard_expression(tmp_path: Path) -> None:
    queries = [q for q in dashboard_queries(json.loads(DASHBOARD.read_text())) if q.expr]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(query.expr)} for i, query in enumerate(queries)
    ]
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the alerts -------------------------------------------------------------------------------------


def _alerts(prometheus_rule: Manifest) -> list[Manifest]:
    return [rule for group in rule_groups(prometheus_rule) for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_duration_a_severity_and_its_texts(prometheus_rule: Manifest) -> None:
    alerts = _alerts(prometheus_rule)
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no `for`; one bad scrape would page"
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["labels"].get("service"), name
        assert alert["annotations"].get("summary"), name
        assert alert["annotations"].get("description"), name


def test_every_alert_is_explained_in_the_components_readme(prometheus_rule: Manifest) -> None:
    readme = (COMPONENT / "README.md").read_text()
    for name in {alert["alert"] for alert in _alerts(prometheus_rule)}:
        assert f"`{name}`" in readme, f"{name} is not in {COMPONENT / 'README.md'}"


def test_promtool_accepts_the_rules(prometheus_rule: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule["spec"]))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass(frozen=True)
class Scenario:
    """Series, and at each evaluation time the alerts that fire then with their labels; all others quiet."""

    name: str
    series: dict[str, str]
    firing: dict[str, dict[str, list[dict[str, str]]]]
    interval: str = "1m"


NS = 'namespace="rag"'


def _requests(service: str, code: str, method: str = "Ask") -> str:
    return f'rag_{service}_rpc_requests_total{{{NS}, rpc_method="{method}", rpc_grpc_status_code="{code}"}}'


def _buckets(metric: str, matchers: str, bounds: list[str], within: str) -> dict[str, str]:
    """A histogram (its cumulative buckets) of 10 observations a minute, each at most `within` and
    above the bound before it."""
    series: dict[str, str] = {}
    full = False
    for bound in bounds:
        full = full or bound == within
        series[f'{metric}{{{NS}, {matchers}, le="{bound}"}}'] = "0+10x60" if full else "0+0x60"
    return series


def _gateway(severity: str) -> dict[str, str]:
    return {"namespace": "rag", "severity": severity, "service": "gateway"}


SCENARIOS = [
    Scenario(
        "gateway server errors burn the error budget fast and slow",
        {_requests("gateway", "OK"): "0+90x90", _requests("gateway", "UNAVAILABLE"): "0+10x90"},
        {"70m": {"RagGatewayErrorBudgetBurn": [_gateway("critical"), _gateway("warning")]}},
    ),
    Scenario(
        "bad input and cancelled calls spend no error budget",
        {
            _requests("gateway", "OK"): "0+50x90",
            _requests("gateway", "INVALID_ARGUMENT"): "0+40x90",
            _requests("gateway", "CANCELLED"): "0+10x90",
        },
        {"70m": {}},
    ),
    Scenario(
        "load shedding alerts on its own",
        {
            _requests("gateway", "OK"): "0+90x60",
            _requests("gateway", "RESOURCE_EXHAUSTED", "Search"): "0+10x60",
        },
        {"30m": {"RagGatewayShedding": [_gateway("warning")]}},
    ),
    Scenario(
        "an inner service failing",
        {
            _requests("retriever", "OK", "Search"): "0+90x60",
            _requests("retriever", "INTERNAL", "Search"): "0+10x60",
        },
        {
            "30m": {
                "RagServiceErrorRatioHigh": [
                    {"namespace": "rag", "severity": "warning", "service": "retriever"}
                ]
            }
        },
    ),
    Scenario(
        "the database unreachable pages first, then the retriever's error ratio",
        {
            _requests("retriever", "OK", "Search"): "0+40x60",
            _requests("retriever", "UNAVAILABLE", "Search"): "0+60x60",
        },
        {
            "8m": {
                "RagDatabaseUnreachable": [
                    {"namespace": "rag", "severity": "critical", "service": "retriever"}
                ]
            },
            "30m": {
                "RagDatabaseUnreachable": [
                    {"namespace": "rag", "severity": "critical", "service": "retriever"}
                ],
                "RagServiceErrorRatioHigh": [
                    {"namespace": "rag", "severity": "warning", "service": "retriever"}
                ],
            },
        },
    ),
    Scenario(
        "slow successful searches break the latency SLO",
        _buckets(
            "rag_gateway_rpc_duration_seconds_bucket",
            'rpc_method="Search", rpc_grpc_status_code="OK"',
            ["1", "2.5", "5", "+Inf"],
            within="5",
        ),
        {"30m": {"RagSearchLatencyHigh": [_gateway("warning")]}},
    ),
    Scenario(
        "fast searches are quiet; slow failed calls and a slow generate stage are not search latency",
        {
            **_buckets(
                "rag_gateway_rpc_duration_seconds_bucket",
                'rpc_method="Search", rpc_grpc_status_code="OK"',
                ["1", "+Inf"],
                within="1",
            ),
            **_buckets(
                "rag_gateway_rpc_duration_seconds_bucket",
                'rpc_method="Search", rpc_grpc_status_code="DEADLINE_EXCEEDED"',
                ["10", "+Inf"],
                within="+Inf",
            ),
            **_buckets(
                "rag_gateway_stage_duration_seconds_bucket", 'stage="generate"', ["10", "+Inf"], within="+Inf"
            ),
        },
        {"30m": {}},
    ),
    Scenario(
        "slow answers break the Ask SLO",
        _buckets(
            "rag_gateway_rpc_duration_seconds_bucket",
            'rpc_method="Ask", rpc_grpc_status_code="OK"',
            ["10", "30", "60", "+Inf"],
            within="60",
        ),
        {"30m": {"RagAskLatencyHigh": [_gateway("warning")]}},
    ),
    Scenario(
        "a slow first token breaks the streaming SLO",
        _buckets(
            "rag_gateway_stage_duration_seconds_bucket",
            'stage="time_to_first_token"',
            ["1", "5", "10", "+Inf"],
            within="10",
        ),
        {"30m": {"RagTimeToFirstTokenHigh": [_gateway("warning")]}},
    ),
    Scenario(
        "an embedder queue that never drains, beside one that does",
        {
            f'rag_embedder_queue_depth{{{NS}, pod="embedder-a"}}': "200+0x30",
            f'rag_embedder_queue_depth{{{NS}, pod="embedder-b"}}': "200+0x10 0 200+0x19",
        },
        {
            "20m": {
                "RagEmbedderQueueSaturated": [
                    {"namespace": "rag", "pod": "embedder-a", "severity": "warning", "service": "embedder"}
                ]
            }
        },
    ),
    Scenario(
        "the answer cache hit ratio collapsing from yesterday's",
        {
            # 50 % hits for a day, then 5 %, at 60 lookups every 5 minutes.
            f'rag_gateway_answer_cache_lookups_total{{{NS}, result="hit"}}': "0+30x288 8643+3x24",
            f'rag_gateway_answer_cache_lookups_total{{{NS}, result="miss"}}': "0+30x288 8697+57x24",
        },
        # At 23 h there is no yesterday to compare with.
        {"23h": {}, "26h": {"RagAnswerCacheHitRateCollapsed": [_gateway("warning")]}},
        interval="5m",
    ),
    Scenario(
        "a steady answer cache is quiet",
        {
            f'rag_gateway_answer_cache_lookups_total{{{NS}, result="hit"}}': "0+30x312",
            f'rag_gateway_answer_cache_lookups_total{{{NS}, result="miss"}}': "0+30x312",
        },
        {"26h": {}},
        interval="5m",
    ),
    Scenario(
        "a pod that stops answering scrapes, and another application's that is not ours",
        {
            f'up{{{NS}, job="retriever", pod="retriever-0", app_kubernetes_io_part_of="rag-platform"}}': (
                "1 1 0+0x20"
            ),
            f'up{{{NS}, job="other", pod="other-0"}}': "0+0x22",
        },
        {
            "10m": {
                "RagMetricsTargetDown": [
                    {
                        "namespace": "rag",
                        "job": "retriever",
                        "pod": "retriever-0",
                        "app_kubernetes_io_part_of": "rag-platform",
                        "severity": "warning",
                        "service": "retriever",
                    }
                ]
            }
        },
    ),
]


def _without_annotations(spec: Manifest) -> Manifest:
    """The rules as written, less their texts: promtool would compare rendered annotations verbatim."""
    groups = [
        {**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
        for group in spec["groups"]
    ]
    return {"groups": groups}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_alerts_fire_exactly_when_their_slo_is_broken(
    scenario: Scenario, prometheus_rule: Manifest, tmp_path: Path
) -> None:
    names = sorted({alert["alert"] for alert in _alerts(prometheus_rule)})
    for firing in scenario.firing.values():
        assert set(firing) <= set(names), set(firing) - set(names)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_without_annotations(prometheus_rule["spec"])))
    test = {
        "interval": scenario.interval,
        "input_series": [{"series": series, "values": values} for series, values in scenario.series.items()],
        "alert_rule_test": [
            {
                "eval_time": at,
                "alertname": name,
                "exp_alerts": [{"exp_labels": labels} for labels in firing.get(name, [])],
            }
            for at, firing in scenario.firing.items()
            for name in names
        ],
    }
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [test]})
    )
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
