"""Fixtures of the Kubernetes and Dockerfile checks: the renders, one render per test, the Dockerfile."""

from __future__ import annotations

import pytest

from tests.k8s.dockerfile import Dockerfile, parse_dockerfile
from tests.k8s.rendering import RENDERS, REPO, Rendered, vk


# Rendering every combination takes a while: once per session, shared by every file here.
@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text())
