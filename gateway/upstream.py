"""Channels to the embedder, retriever and generator, and how their failures surface.

Retries live in the channel's service config: only UNAVAILABLE is retried, with
backoff, so a call to a service that is down fails fast instead of hanging, and
a call that reached a replica as it died is sent again, to another replica.
`round_robin` (the default policy) spreads calls over every address of a target:
a dns:/// name or a list such as "ipv4:10.0.0.1:50052,10.0.0.2:50052".
Keepalive pings find connections to replicas that vanished without closing them.
With ChannelPolicy.tls set, every channel speaks TLS (mTLS with a client certificate).
Every call is signed for the service it goes to (services/common/internal_auth.py)
and carries the trace context, so the service's spans join the caller's trace;
both are added as metadata by the channel itself, not by client interceptors,
which cost a task and a call object per call (services/common/call_metadata.py).

A dependency's failure reaches the caller as a status naming the dependency:
with its message when one of our services wrote it (written for callers), and
with only its code when gRPC made it up on the way (connection failures, which
name internal addresses); the whole of it goes to the log with the trace id.
Our services' rich details go on too, in the caller's terms: the field at fault
renamed to the gateway request's, and the retry hint (gateway/error_details.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import grpc

from gateway.error_details import GATEWAY_MADE, CallerDetails, FieldOrigins, caller_details
from rag.embedder.v1 import embedder_pb2_grpc
from rag.generator.v1 import generator_pb2_grpc
from rag.retriever.v1 import retriever_pb2_grpc
from services.common import errors
from services.common.call_metadata import Metadata, MetadataChannel, with_trace_context
from services.common.channel_config import LbPolicy, service_config
from services.common.errors_interceptor import STATUS_DETAILS_KEY
from services.common.internal_auth import TokenSigner, signed_metadata
from services.common.registry import EMBEDDER, GENERATOR, RETRIEVER, Service
from services.common.telemetry import current_trace_id
from services.common.tls import ClientTls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelPolicy:
    """How a channel spreads calls over a target's addresses, notices dead ones and secures them."""

    # round_robin spreads calls over every address; pick_first uses one at a time.
    lb_policy: LbPolicy = "round_robin"
    # A ping after this long without traffic; no ack within the timeout and
    # the connection is dropped, so the balancer stops picking it.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # None: plaintext. The same trust roots and client certificate for every upstream.
    tls: ClientTls | None = None


DEFAULT_POLICY = ChannelPolicy()
MAX_RECONNECT_BACKOFF_MS = 2000


# Statuses whose meaning holds across the hop; anything else from a dependency
# is the gateway's failure to serve, reported as UNAVAILABLE or INTERNAL.
_PASSED_THROUGH: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    # The retriever checks the call's tenant too: its refusal is the caller's.
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}


def open_channel(target: str, max_message_bytes: int, policy: ChannelPolicy) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(policy.lb_policy)),
        ("grpc.enable_retries", 1),
        # gRPC's default backoff between connection attempts grows to 120 s; a
        # replica restarted after a longer outage would wait that long to get calls.
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", round(policy.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(policy.keepalive_timeout_s * 1000)),
        # Ping idle connections too: round_robin may pick any of them next.
        # max_pings_without_data=0, or gRPC stops after two pings on a
        # connection without calls. Servers must permit such pings (see
        # services/common/server.py) or they answer GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if policy.tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    # Reads the PEM files now, at start-up: a bad path fails it with the setting's name.
    return grpc.aio.secure_channel(
        target, policy.tls.credentials(), options=[*options, *policy.tls.channel_options()]
    )


def signing_channel(channel: grpc.aio.Channel, signer: TokenSigner, audience: str) -> grpc.aio.Channel:
    """`channel` with every call signed for `audience` and carrying the trace context.

    Typed as the channel it wraps: the generated stubs take it as one.
    """

    def add(method: str, timeout: float | None, metadata: Metadata | None) -> Metadata:
        return with_trace_context(signed_metadata(signer, audience, timeout, metadata))

    return cast(grpc.aio.Channel, MetadataChannel(channel, add))


@contextmanager
def calling(service: str, origins: FieldOrigins = GATEWAY_MADE) -> Iterator[None]:
    """Re-raises a dependency's failure as the gateway's own, naming the dependency.

    `origins` says which gateway request field each field of the inner request
    came from, so that a field the dependency refuses is reported as the
    caller's (gateway/error_details.py); unset, the gateway made every field.
    """
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise _public_error(service, error, origins) from error


def _public_error(service: str, error: grpc.aio.AioRpcError, origins: FieldOrigins) -> errors.ServiceError:
    code, trace_id = error.code(), current_trace_id()
    # Our services attach a google.rpc.Status to every refusal (errors_interceptor.py),
    # with a message written for callers; gRPC's own statuses carry none.
    ours = any(name == STATUS_DETAILS_KEY for name, _ in error.trailing_metadata() or ())
    log.log(
        logging.INFO if ours else logging.WARNING,
        "%s call failed: %s %s (trace id %s)",
        service,
        code.name,
        error.details(),
        trace_id,
    )
    withheld = f"{code.name} (details in the gateway's log, trace id {trace_id})"
    error_type = _PASSED_THROUGH.get(code)
    if error_type is None:
        return errors.ServiceError(f"{service} failed: {withheld}")
    # What gRPC made up on the way says nothing to the caller, and carries no details.
    details = caller_details(error, origins) if ours else CallerDetails()
    said = details.reworded(error.details() or "") if ours else withheld
    named = f"{service} is unavailable" if code == grpc.StatusCode.UNAVAILABLE else service
    return error_type(f"{named}: {said}", field=details.field, retry_after_ms=details.retry_after_ms)


@dataclass
class Upstreams:
    embedder: embedder_pb2_grpc.EmbedderServiceAsyncStub
    # The same target on a channel of its own, for ingest's EmbedStream calls alone, so that
    # round_robin takes turns over the replicas stream by stream. On the shared channel an
    # ingest's Info and Chunk calls take turns too, and successive streams can all land on one
    # replica (bench/ingest_scale.py: 48 of 60 streams on one of two, the other's core idle).
    embedder_streams: embedder_pb2_grpc.EmbedderServiceAsyncStub
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(
        cls,
        *,
        embedder_target: str,
        retriever_target: str,
        generator_target: str,
        max_message_bytes: int,
        signer: TokenSigner,
        policy: ChannelPolicy = DEFAULT_POLICY,
    ) -> Upstreams:
        channels: list[grpc.aio.Channel] = []

        def channel(service: Service, target: str) -> grpc.aio.Channel:
            opened = open_channel(target, max_message_bytes, policy)
            channels.append(opened)
            return signing_channel(opened, signer, service.name)

        embedder = channel(EMBEDDER, embedder_target)
        embedder_streams = channel(EMBEDDER, embedder_target)
        retriever = channel(RETRIEVER, retriever_target)
        generator = channel(GENERATOR, generator_target)
        return cls(
            embedder=embedder_pb2_grpc.EmbedderServiceStub(embedder),
            embedder_streams=embedder_pb2_grpc.EmbedderServiceStub(embedder_streams),
            retriever=retriever_pb2_grpc.RetrieverServiceStub(retriever),
            generator=generator_pb2_grpc.GeneratorServiceStub(generator),
            channels=channels,
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
