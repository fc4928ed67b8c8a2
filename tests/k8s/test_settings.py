"""Settings agree with the code: the environment the manifests give each service is one its
Settings accept, and each Settings class listens where the service registry says."""

from __future__ import annotations

import pytest

from tests.k8s.objects import service_env
from tests.k8s.rendering import Rendered
from tests.k8s.services import ServiceSpec, env_names_of, for_each_service, load_settings, settings_class


@for_each_service
def test_settings_accept_the_rendered_environment(
    render: Rendered, service: ServiceSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_class(service)
    env = service_env(render, service)
    known = env_names_of(settings, service.env_prefix)
    unknown = sorted(k for k in env if k.startswith(service.env_prefix) and k not in known)
    # The settings ignore unknown variables, so a misspelt one would silently do nothing.
    assert not unknown, f"{render.name}: {service.name}: no such settings: {unknown}"
    load_settings(service, env, monkeypatch)


@for_each_service
def test_settings_take_their_prefix_and_port_from_the_registry(service: ServiceSpec) -> None:
    settings = settings_class(service)
    assert settings.model_config["env_prefix"] == service.env_prefix
    assert settings.model_fields["port"].default == service.port
