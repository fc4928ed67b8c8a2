"""Every overlay renders with every component, and every rendered object is schema-valid."""

from __future__ import annotations

from tests.k8s.rendering import RENDERS, REPO, Rendered, vk


def test_every_render_is_schema_valid(rendered: dict[str, Rendered]) -> None:
    errors = [f"{r.name}: {e}" for r in rendered.values() for e in r.errors]
    assert not errors, "\n".join(errors)


def test_every_overlay_is_rendered_with_every_component() -> None:
    k8s = REPO / "k8s"
    overlays = {p.parent.name for p in (k8s / "overlays").glob("*/kustomization.yaml")}
    components = {p.parent.name for p in (k8s / "components").glob("*/kustomization.yaml")}
    assert {"dev", "prod"} <= overlays
    assert {"network-policies", "external-postgres", "embedder-queue-autoscaling", "monitoring"} <= components
    names = {r.name for r in RENDERS}
    for overlay in overlays:
        assert f"overlays/{overlay}" in names
        # An overlay that lists a component renders with it already; adding it twice would clash.
        included = {path.name for path in vk.included_components(k8s / "overlays" / overlay)}
        for component in components:
            if component in included:
                assert f"overlays/{overlay} + components/{component}" not in names
            else:
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
