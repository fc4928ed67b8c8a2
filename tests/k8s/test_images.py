"""The manifests run the Dockerfile's images, and the embedder's pods find the export baked into its image."""

from __future__ import annotations

import re

from tests.k8s.dockerfile import Dockerfile, project_version, under
from tests.k8s.objects import (
    only_container,
    service_env,
)
from tests.k8s.rendering import Rendered
from tests.k8s.services import SERVICES


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
        hidden = [m for m in mounts if under(cache, m) or under(m, cache)]
        assert not hidden, f"{render.name}: {hidden} hides the image's ONNX export at {cache}"
    else:
        # Elsewhere, the pod exports at every start (an emptyDir starts empty): it must be writable.
        assert any(under(cache, m) for m in mounts), (
            f"{render.name}: EMBEDDER_ONNX_CACHE_DIR {cache} is on the read-only root filesystem"
        )


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
