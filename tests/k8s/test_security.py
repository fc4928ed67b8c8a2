"""Every pod is locked down: non-root as the image's user, read-only root filesystem, no capabilities."""

from __future__ import annotations

from tests.k8s.dockerfile import Dockerfile
from tests.k8s.objects import (
    only_container,
    pod_spec,
)
from tests.k8s.rendering import Rendered
from tests.k8s.services import ServiceSpec, for_each_service


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


@for_each_service
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
