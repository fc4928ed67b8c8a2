"""With the network-policies component, exactly the paths the system uses are open."""

from __future__ import annotations

from tests.k8s.objects import (
    labels_match,
    pods_selected,
    port_allowed,
    selects_by_expression,
)
from tests.k8s.rendering import Manifest, Rendered
from tests.k8s.services import OTLP_GRPC_PORT, SERVICES, UPSTREAMS


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
