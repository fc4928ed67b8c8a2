"""The one way every service runs its grpc.aio server.

Start-up order: listen with health NOT_SERVING, start the real dependency
(model, database pool), then report SERVING. While serving, a service may watch
something it needs and report NOT_SERVING while it is missing (the gateway's
API keys file). On SIGTERM or SIGINT: health goes NOT_SERVING so load balancers
drain, in-flight calls get the grace period, then the dependency is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import filters
from opentelemetry.sdk.trace import TracerProvider

from services.common.call_observer import CallObserver
from services.common.errors_interceptor import ErrorInterceptor
from services.common.metrics import namespace_of, setup_metrics
from services.common.settings import ServerSettings

log = logging.getLogger(__name__)


async def _nothing() -> None:
    return None


# Sets the service's health as probes see it: True for SERVING, False for NOT_SERVING.
ReportHealth = Callable[[bool], Awaitable[None]]


# The health "service" a liveness probe checks: SERVING from listening until the stop.
LIVENESS = "liveness"


async def _nothing_to_watch(_: ReportHealth) -> None:
    return None


@dataclass(frozen=True)
class ServiceBinding:
    """What serve() needs from a service."""

    # Full names of the gRPC services, e.g. "rag.embedder.v1.EmbedderService".
    service_names: Sequence[str]
    # Adds the servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    # Makes the real dependency ready; the service is SERVING once it returns.
    start: Callable[[], Coroutine[Any, Any, None]] = _nothing
    # Releases the dependency after the server has stopped.
    stop: Callable[[], Coroutine[Any, Any, None]] = _nothing
    # The service's own cross-cutting checks (the gateway's authentication and
    # admission), run in this order before its handlers. They sit inside the
    # shared ones, so a ServiceError they raise becomes its status like a
    # handler's would, and traces and RPC metrics record that status.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    # Runs from SERVING until the stop, for a dependency that can fail while the
    # service runs: it reports NOT_SERVING (False) while the service cannot do
    # its work, and SERVING (True) once it can again. If it raises, the process
    # ends with its error.
    watch: Callable[[ReportHealth], Coroutine[Any, Any, None]] = _nothing_to_watch


def untraced_calls() -> filters.Condition[grpc.HandlerCallDetails]:
    """Health checks and reflection would drown real traces and RPC metrics; keep them out."""
    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))


async def serve(settings: ServerSettings, binding: ServiceBinding, tracer_provider: TracerProvider) -> None:
    # Metrics share the traces' resource (service.name, OTEL_RESOURCE_ATTRIBUTES).
    metrics_export = setup_metrics(tracer_provider.resource)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=[
            # Outside ErrorInterceptor: it sees the status an exception was turned into.
            CallObserver(namespace_of(binding.service_names[0]), untraced_calls(), tracer_provider),
            ErrorInterceptor(),
            *binding.interceptors,
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
            # The gateway's channels ping idle connections (GATEWAY_KEEPALIVE_TIME_S, at
            # least 10 s): accept that instead of answering GOAWAY "too_many_pings".
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    binding.register(server)
    reflection.enable_server_reflection(
        [*binding.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    await _set_all(health_servicer, binding.service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
    # The process answers: what a liveness probe asks. Readiness ("" and the
    # service's own name) also needs the dependency, and a dependency that is
    # down (a database, a broken keys file) must not make Kubernetes restart
    # a process that would only come back to the same state.
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    _listen(server, settings)
    await server.start()
    log.info("listening on %s; starting dependencies", settings.address)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    starting = asyncio.create_task(binding.start())
    await asyncio.wait([starting, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        starting.result()  # a failed start-up ends the process with its error
        await _set_all(health_servicer, binding.service_names, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving")

        async def report(serving: bool) -> None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await _set_all(health_servicer, binding.service_names, status)

        await _watch_until(stopping, binding.watch(report))
    else:
        starting.cancel()

    log.info("stopping: draining for up to %.1fs", settings.grace_period_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.grace_period_s)
    await binding.stop()
    tracer_provider.shutdown()
    metrics_export.shutdown()
    log.info("stopped")


async def _watch_until(stopping: asyncio.Event, watch: Coroutine[Any, Any, None]) -> None:
    """Runs `watch` until `stopping` is set; a watch that fails ends the process with its error."""
    watching = asyncio.create_task(watch)
    stopped = asyncio.create_task(stopping.wait())
    await asyncio.wait([watching, stopped], return_when=asyncio.FIRST_COMPLETED)
    if watching.done():
        watching.result()
        await stopped  # a watch that had nothing to watch returns at once
        return
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching


def _listen(server: grpc.aio.Server, settings: ServerSettings) -> None:
    """TLS when a certificate is set, on the one port: health checks and reflection included."""
    tls = settings.tls
    if tls is None:
        server.add_insecure_port(settings.address)
        return
    # Reads the files now: a bad path fails start-up with the setting's name.
    server.add_secure_port(settings.address, tls.credentials())
    log.info(
        "TLS on %s%s", settings.address, " with client certificates (mTLS)" if tls.client_ca_file else ""
    )


async def _set_all(
    health_servicer: health.aio.HealthServicer, service_names: Sequence[str], status: int
) -> None:
    # "" is the overall server health that plain `grpc_health_probe` asks for.
    for name in ["", *service_names]:
        await health_servicer.set(name, status)
