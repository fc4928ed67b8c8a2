"""The four services as the manifests and the Dockerfile deploy them: the registry's entries
(services/common/registry.py), each with its Settings class and the image stage it builds on."""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import AliasChoices

from services.common import registry
from services.common.metrics import DEFAULT_PROMETHEUS_PORT

# Every service serves Prometheus /metrics on the exporter's default port, and
# sends traces to the collector's OTLP/gRPC port.
METRICS_PORT = DEFAULT_PROMETHEUS_PORT
OTLP_GRPC_PORT = 4317
POSTGRES_PORT = 5432
# The Job that creates the retriever's database role (k8s/base/database-setup.yaml).
DATABASE_SETUP = "database-setup"


@dataclass(frozen=True)
class ServiceSpec(registry.Service):
    settings: str  # "package.module:Class"
    runtime: str  # the Dockerfile stage the image builds on


def _deployed(service: registry.Service, settings: str, runtime: str) -> ServiceSpec:
    return ServiceSpec(**dataclasses.asdict(service), settings=settings, runtime=runtime)


SERVICES = {
    s.name: s
    for s in [
        _deployed(registry.GATEWAY, "gateway.config:GatewaySettings", "runtime-core"),
        _deployed(registry.EMBEDDER, "services.embedder.config:EmbedderSettings", "runtime-ml"),
        _deployed(registry.RETRIEVER, "services.retriever.config:RetrieverSettings", "runtime-ml"),
        _deployed(registry.GENERATOR, "services.generator.config:GeneratorSettings", "runtime-ml"),
    ]
}
UPSTREAMS = tuple(upstream.name for upstream in registry.GATEWAY_UPSTREAMS)

# A test taking a `service` argument runs once per service, named after it.
for_each_service = pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)


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


def load_settings(service: ServiceSpec, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's Settings read from `env` alone; raises on a missing or invalid value, as the
    service would at start-up."""
    settings = settings_class(service)
    known = env_names_of(settings, service.env_prefix)
    for name in list(os.environ):
        if name.startswith(service.env_prefix) or name in known:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings()
