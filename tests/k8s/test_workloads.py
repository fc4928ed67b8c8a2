"""The services' Deployments: ports, probes, shutdown, thread counts, service links."""

from __future__ import annotations

import math

import pytest

from gateway.config import GatewaySettings
from services.common.server import LIVENESS
from services.common.settings import MiB
from tests.k8s.objects import (
    only_container,
    parse_quantity,
    pod_spec,
    resource_field_value,
    service_env,
)
from tests.k8s.rendering import Rendered
from tests.k8s.services import METRICS_PORT, SERVICES, ServiceSpec, for_each_service, load_settings

# The gateway's memory arithmetic (gateway/config.py): an admitted call holds about this many
# copies of its request until it ends, beside the process itself at rest.


@for_each_service
def test_probes_ports_and_settings_agree(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    container = only_container(deployment)
    env = service_env(render, service)
    where = f"{render.name}: {service.name}"

    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": service.port,
        "metrics": METRICS_PORT,
    }, where
    assert env[f"{service.env_prefix}PORT"] == str(service.port), where
    # Listening on 127.0.0.1 (the settings' default) would refuse the kubelet and every peer.
    assert env[f"{service.env_prefix}HOST"] in ("0.0.0.0", "[::]"), where
    # The kubelet's gRPC probe speaks plaintext only: on a TLS port every probe would fail. Inner
    # calls are authenticated by the gateway's signed token, which health checks do not need.
    assert f"{service.env_prefix}TLS_CERT_FILE" not in env, f"{where}: native grpc probes need plaintext"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None and kind == "startupProbe":
            continue
        assert probe is not None, f"{where}: no {kind}"
        assert "grpc" in probe, f"{where}: {kind} must be a native grpc probe (grpc.health.v1)"
        assert probe["grpc"]["port"] == service.port, f"{where}: {kind} port"
        # Liveness asks only whether the process answers (services/common/server.py), so a dependency
        # that is down takes a pod out of rotation without restarting it; the others need the dependency.
        expected = LIVENESS if kind == "livenessProbe" else ""
        assert probe["grpc"].get("service", "") == expected, f"{where}: {kind} checks health {expected!r}"


@for_each_service
def test_termination_grace_outlasts_the_servers_grace(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    container = only_container(deployment)
    grace = float(service_env(render, service).get(f"{service.env_prefix}GRACE_PERIOD_S", "10"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = 0.0
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", f"{render.name}: {service.name}: preStop is a plain sleep"
        sleep = float(command[1])
    elif "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    total = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    # The kubelet's clock starts with preStop; SIGKILL must not cut the drain short.
    assert total > sleep + grace, (
        f"{render.name}: {service.name}: terminationGracePeriodSeconds {total} "
        f"<= preStop {sleep}s + {service.env_prefix}GRACE_PERIOD_S {grace}s"
    )


def test_gateway_requests_fit_its_memory_limit(render: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call the gateway admits, at the largest message, and every parse worker fit the pod's memory."""
    gateway = SERVICES["gateway"]
    settings = load_settings(gateway, service_env(render, gateway), monkeypatch)
    assert isinstance(settings, GatewaySettings)
    limit = only_container(render.one("Deployment", gateway.name))["resources"]["limits"]["memory"]
    assert settings.memory_needed_bytes <= parse_quantity(limit), (
        f"{render.name}: the gateway may need {settings.memory_needed_bytes / MiB:.0f} MiB "
        f"(GATEWAY_MAX_IN_FLIGHT {settings.max_in_flight} x GATEWAY_MAX_MESSAGE_BYTES "
        f"{settings.max_message_bytes} x 3 copies, {settings.max_concurrent_parses} parse workers of "
        f"{settings.parse_memory_mib} MiB, the process): more than the limit {limit}"
    )


def test_embedder_threads_match_its_cpu_limit(render: Rendered) -> None:
    """ONNX Runtime and torch default to one thread per node core, whatever the pod's CPU limit."""
    container = only_container(render.one("Deployment", "embedder"))
    limit = container["resources"].get("limits", {}).get("cpu")
    assert limit is not None, f"{render.name}: the embedder needs a CPU limit to size its thread pools"
    cpus = str(math.ceil(parse_quantity(limit)))
    env = service_env(render, SERVICES["embedder"])
    for name in ("EMBEDDER_INTRA_OP_THREADS", "OMP_NUM_THREADS"):
        assert env.get(name) == cpus, f"{render.name}: {name}={env.get(name)} but the CPU limit is {limit}"


def test_embedder_resolves_thread_counts_like_the_kubelet() -> None:
    container = {"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "1536Mi"}}}
    assert resource_field_value([container], container, {"resource": "limits.cpu"}) == "1"
    assert resource_field_value([container], container, {"resource": "limits.cpu", "divisor": "1m"}) == "500"
    memory = {"resource": "limits.memory", "divisor": "1Mi"}
    assert resource_field_value([container], container, memory) == "1536"
    assert resource_field_value([container], container, {"resource": "requests.cpu"}) == "<node allocatable>"


def test_service_links_are_off(render: Rendered) -> None:
    # With links on, the ClusterIP Service "gateway" injects GATEWAY_PORT=tcp://...,
    # which the gateway would read as its port setting.
    for workload in render.workloads():
        assert pod_spec(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]
