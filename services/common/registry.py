"""The four services: process name, Python module, settings prefix, default gRPC port.

Everything that needs to know which services exist reads this table: each
service's Settings (the `port` default), the local launcher (rag_cli/stack.py),
the Kubernetes manifest tests and the end-to-end tests. Plain data, so importing
it loads no service code, model or generated stubs.

Every service serves Prometheus metrics on the same default port,
services.common.metrics.DEFAULT_PROMETHEUS_PORT, when metrics are on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    # The process, log file, Kubernetes Deployment and image are named after it.
    name: str
    # Started as `python -m <module>`.
    module: str
    # Of every environment variable its Settings read, e.g. EMBEDDER_PORT.
    env_prefix: str
    # Default gRPC port; `rag up --port P` keeps the same offsets from the gateway's.
    port: int
    # Full name of its public gRPC service in protos/.
    grpc_service: str


GATEWAY = Service("gateway", "gateway", "GATEWAY_", 50050, "rag.gateway.v1.GatewayService")
EMBEDDER = Service("embedder", "services.embedder", "EMBEDDER_", 50051, "rag.embedder.v1.EmbedderService")
RETRIEVER = Service(
    "retriever", "services.retriever", "RETRIEVER_", 50052, "rag.retriever.v1.RetrieverService"
)
GENERATOR = Service(
    "generator", "services.generator", "GENERATOR_", 50053, "rag.generator.v1.GeneratorService"
)

# The services the gateway calls, each through a GATEWAY_<NAME>_TARGET setting.
GATEWAY_UPSTREAMS = (EMBEDDER, RETRIEVER, GENERATOR)
# In start order: a service starts after the ones it calls.
SERVICES = (*GATEWAY_UPSTREAMS, GATEWAY)
BY_NAME = {service.name: service for service in SERVICES}
DEFAULT_PORTS = {service.name: service.port for service in SERVICES}


def upstream_target_variable(upstream: Service) -> str:
    """The gateway setting that names where it reaches `upstream`: GATEWAY_EMBEDDER_TARGET, ..."""
    return f"{GATEWAY.env_prefix}{upstream.name.upper()}_TARGET"
