"""Traces go to the in-cluster collector; metrics are served and Prometheus may scrape them."""

from __future__ import annotations

import re

from tests.k8s.objects import (
    container_ports,
    pod_spec,
    pods_selected,
    port_allowed,
    selects_by_expression,
    service_env,
)
from tests.k8s.rendering import Rendered
from tests.k8s.services import METRICS_PORT, OTLP_GRPC_PORT, ServiceSpec, for_each_service


@for_each_service
def test_traces_go_to_the_collector(render: Rendered, service: ServiceSpec) -> None:
    import yaml

    env = service_env(render, service)
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
    match = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert match, env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert match[1] == f"otel-collector.{render.namespace}.svc.cluster.local"
    assert int(match[2]) == OTLP_GRPC_PORT
    collector_service = render.one("Service", "otel-collector")
    assert OTLP_GRPC_PORT in [p["port"] for p in collector_service["spec"]["ports"]]

    (collector,) = pods_selected(render, collector_service["spec"]["selector"])
    volume = next(v for v in pod_spec(collector)["volumes"] if "configMap" in v)
    config = yaml.safe_load(render.one("ConfigMap", volume["configMap"]["name"])["data"]["config.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{OTLP_GRPC_PORT}"
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert set(traces["exporters"]) <= set(config["exporters"])
    assert "debug" in traces["exporters"]


@for_each_service
def test_metrics_are_served_and_scraped(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    env = service_env(render, service)
    where = f"{render.name}: {service.name}"
    assert "prometheus" in env["OTEL_METRICS_EXPORTER"].split(","), where
    # The default, localhost, would refuse Prometheus.
    assert env["OTEL_EXPORTER_PROMETHEUS_HOST"] in ("0.0.0.0", "[::]"), where
    assert int(env["OTEL_EXPORTER_PROMETHEUS_PORT"]) == METRICS_PORT, where
    assert container_ports(deployment)["metrics"] == METRICS_PORT, where
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if render.all("PodMonitor"):
        # The monitoring component's PodMonitors scrape instead (tests/k8s/test_monitoring.py).
        assert not any(key.startswith("prometheus.io/") for key in annotations), where
    else:
        assert annotations.get("prometheus.io/scrape") == "true", where
        assert annotations.get("prometheus.io/port") == str(METRICS_PORT), where
        assert annotations.get("prometheus.io/path") == "/metrics", where
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The policies that select the pod for ingress; with none, nothing is refused to it.
    isolating = [
        policy
        for policy in render.all("NetworkPolicy")
        if selects_by_expression(policy["spec"]["podSelector"], labels)
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
    ]
    if isolating:
        admits_scrape = [
            policy["metadata"]["name"]
            for policy in isolating
            for rule in policy["spec"].get("ingress", [])
            if port_allowed(rule, METRICS_PORT, "TCP")
            and any("namespaceSelector" in peer for peer in rule.get("from", []))
        ]
        assert admits_scrape, f"{where}: no NetworkPolicy admits Prometheus to port {METRICS_PORT}"
