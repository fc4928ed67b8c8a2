"""With the network-policies component, which the prod overlay includes, exactly the paths the
system uses are open."""

from __future__ import annotations

import yaml

from tests.k8s.objects import (
    labels_match,
    pods_selected,
    port_allowed,
    selects_by_expression,
)
from tests.k8s.rendering import REPO, Manifest, Rendered
from tests.k8s.services import DATABASE_SETUP, OTLP_GRPC_PORT, POSTGRES_PORT, SERVICES, UPSTREAMS


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
        return labels is not None and selects_by_expression(policy["spec"]["podSelector"], labels)

    egress = [p for p in policies if selects(p, src) and "Egress" in p["spec"].get("policyTypes", [])]
    egress_ok = not egress or any(
        _peer_allowed(rule.get("to"), dst) and port_allowed(rule, port, protocol)
        for p in egress
        for rule in p["spec"].get("egress", [])
    )
    if dst is None:
        return egress_ok
    ingress = [
        p for p in policies if selects(p, dst) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    ingress_ok = not ingress or any(
        _peer_allowed(rule.get("from"), src) and port_allowed(rule, port, protocol)
        for p in ingress
        for rule in p["spec"].get("ingress", [])
    )
    return egress_ok and ingress_ok


def test_network_policies_allow_exactly_the_paths_the_system_uses(render: Rendered) -> None:
    # The network-policies component's default deny; a component's own policies (cloudnative-pg's)
    # fence off its pods alone and leave the rest open.
    if render.get("NetworkPolicy", "default-deny") is None:
        return
    labels = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in render.workloads()}
    gateway = labels["gateway"]
    assert allowed(render, None, gateway, SERVICES["gateway"].port), "clients -> gateway"
    for upstream in UPSTREAMS:
        port = SERVICES[upstream].port
        assert allowed(render, gateway, labels[upstream], port), f"gateway -> {upstream}"
        for other in labels.keys() - {"gateway"}:
            assert not allowed(render, labels[other], labels[upstream], port), f"{other} -> {upstream}"
    for service in SERVICES:
        assert allowed(render, labels[service], labels["otel-collector"], OTLP_GRPC_PORT), (
            f"{service} -> OTLP"
        )
    for workload in labels:
        assert allowed(render, labels[workload], None, 53, "UDP"), f"{workload} -> DNS"
    # The retriever, and the Job that creates its role, reach the database; nothing else does.
    database_clients = {"retriever", DATABASE_SETUP}
    if "postgres" in labels:
        for client in database_clients:
            assert allowed(render, labels[client], labels["postgres"], POSTGRES_PORT), f"{client} -> postgres"
        for other in labels.keys() - database_clients - {"postgres"}:
            assert not allowed(render, labels[other], labels["postgres"], POSTGRES_PORT), (
                f"{other} -> postgres"
            )
    else:
        for client in database_clients:
            assert allowed(render, labels[client], None, POSTGRES_PORT), f"{client} -> external PostgreSQL"
    # Every peer selector names pods that exist (a typo would silently block traffic): workloads
    # here, or the pods the CloudNativePG operator runs for a Cluster (all labelled cnpg.io/cluster).
    # Peers in other namespaces (a namespaceSelector) are not rendered here.
    clusters = {cluster["metadata"]["name"] for cluster in render.all("Cluster")}
    for policy in render.all("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    selector = peer["podSelector"].get("matchLabels", {})
                    operated = selector.get("cnpg.io/cluster") in clusters
                    assert operated or pods_selected(render, selector), (
                        f"{policy['metadata']['name']}: {selector}"
                    )


def test_prod_applies_the_network_policies(render: Rendered) -> None:
    if not render.name.startswith("overlays/prod"):
        return
    component = REPO / "k8s" / "components" / "network-policies" / "network-policies.yaml"
    expected = {policy["metadata"]["name"] for policy in yaml.safe_load_all(component.read_text())}
    assert expected <= {policy["metadata"]["name"] for policy in render.all("NetworkPolicy")}, render.name
    # Anything not allowed is refused, in both directions, for every pod.
    deny = render.one("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress")
    assert not deny.get("egress")
