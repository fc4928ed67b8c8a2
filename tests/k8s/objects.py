"""Reading rendered Kubernetes objects: pods, containers, their environment, selectors and ports."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from tests.k8s.rendering import Manifest, Rendered
from tests.k8s.services import ServiceSpec


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


def workload_env(render: Rendered, workload: Manifest) -> dict[str, str]:
    """The environment of a workload's only container."""
    return container_env(render, only_container(workload), pod_spec(workload)["containers"])


def service_env(render: Rendered, service: ServiceSpec) -> dict[str, str]:
    return workload_env(render, render.one("Deployment", service.name))


def secret_key_ref(container: Manifest, variable: str) -> tuple[str, str] | None:
    """(Secret, key) a variable of the container is read from; None when it is not from a Secret."""
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if item["name"] == variable and ref is not None:
            return ref["name"], ref["key"]
    return None


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


def parse_target(target: str) -> tuple[str, int]:
    match = re.fullmatch(r"dns:///([a-z0-9.-]+):(\d+)", target)
    assert match, f"{target!r} is not a dns:///host:port target"
    return match[1], int(match[2])


def selects_by_expression(selector: Manifest, labels: dict[str, str]) -> bool:
    """matchLabels and the In operator of matchExpressions, all the policies here use."""
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return labels_match(selector.get("matchLabels", {}), labels)


def port_allowed(rule: Manifest, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)
