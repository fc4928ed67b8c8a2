"""Services, gateway targets, ConfigMaps and Secrets: every reference names an object that exists."""

from __future__ import annotations

from services.common.registry import upstream_target_variable
from tests.k8s.credentials import OUT_OF_BAND_SECRETS, operator_secrets
from tests.k8s.objects import (
    container_ports,
    parse_target,
    pod_spec,
    pods_selected,
    secret_values,
    service_env,
)
from tests.k8s.rendering import Manifest, Rendered
from tests.k8s.services import SERVICES, UPSTREAMS


def test_gateway_targets_are_dns_targets_of_headless_services(render: Rendered) -> None:
    env = service_env(render, SERVICES["gateway"])
    for upstream in UPSTREAMS:
        target = env[upstream_target_variable(SERVICES[upstream])]
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


def _references(pod: Manifest) -> list[tuple[str, str, str | None]]:
    """(kind, name, key or None for the whole object) of every ConfigMap and Secret the pod reads."""
    refs: list[tuple[str, str, str | None]] = []
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in source:
                    refs.append((kind, source[field]["name"], None))
        for item in container.get("env", []):
            source = item.get("valueFrom", {})
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if field in source:
                    refs.append((kind, source[field]["name"], source[field]["key"]))
    for volume in pod.get("volumes", []):
        for kind, field, name_field in (
            ("ConfigMap", "configMap", "name"),
            ("Secret", "secret", "secretName"),
        ):
            if field in volume:
                name = volume[field][name_field]
                keys = [item["key"] for item in volume[field].get("items", [])] or [None]
                refs.extend((kind, name, key) for key in keys)
    return refs


def test_referenced_config_maps_and_secrets_exist(render: Rendered) -> None:
    for workload in render.workloads():
        name = f"{render.name}: {workload['metadata']['name']}"
        for kind, ref_name, ref_key in _references(pod_spec(workload)):
            obj = render.get(kind, ref_name)
            if obj is None:
                assert kind == "Secret", f"{name}: no {kind} {ref_name}"
                # Created out of band (README "Deploying on Kubernetes"), or by the CloudNativePG
                # operator for a Cluster.
                assert ref_name in OUT_OF_BAND_SECRETS | operator_secrets(render), (
                    f"{name}: no Secret {ref_name}"
                )
                continue
            values = (obj.get("data") or {}) if kind == "ConfigMap" else secret_values(obj)
            assert ref_key is None or ref_key in values, f"{name}: {kind} {ref_name} lacks {ref_key}"


def test_every_namespaced_object_is_in_the_namespace(render: Rendered) -> None:
    for obj in render.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == render.namespace, f"{render.name}: {obj['kind']}"
