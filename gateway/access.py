"""Who gets in, and whether there is room: the checks every GatewayService call passes first.

In this order, the same for every RPC, before its handler validates the rest:
1. the API key (UNAUTHENTICATED; UNAVAILABLE while the keys file cannot be
   read): nothing about the request is answered to a caller who is not known;
2. admission (RESOURCE_EXHAUSTED, gateway/admission.py): room in the gateway
   and in the key's share of it;
3. the namespace's format (INVALID_ARGUMENT);
4. the key grants the namespace (PERMISSION_DENIED).

The first two need only the call's metadata and run when gRPC looks up the
call's handler, before the request is read: a refused call costs neither the
memory of its message (up to the size limit) nor its decoding, so callers
without a key, or beyond the limits, cannot make the gateway spend either.
Admission therefore comes before the namespace checks, which need the decoded
request; a caller with a valid key may thus be told the gateway is full before
being told its namespace is malformed or not granted, the same way on every RPC.

Health and reflection are other services: they pass untouched, open to probes
and not counted against the gateway's limit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from gateway.admission import Admission
from gateway.auth import Authorizer, Caller
from services.common.errors import ServiceError
from services.common.handlers import Handler, HandlerInterceptor, checked_first, refusing_unread
from services.common.validation import require_namespace

Context = grpc.aio.ServicerContext[Any, Any]

# Where each GatewayService RPC's request names its namespace.
NAMESPACE_FIELDS: Mapping[str, str] = {
    "Ask": "namespace",
    "AskStream": "request.namespace",
    "Search": "namespace",
    "IngestDocuments": "namespace",
    "DeleteDocuments": "namespace",
    "ListDocuments": "namespace",
    "SubmitFeedback": "namespace",
    "ListFeedback": "namespace",
}


def _field_value(message: Any, path: str) -> str:
    value: str = functools.reduce(getattr, path.split("."), message)
    return value


def _check_namespace(caller: Caller, field: str, request: Any, context: Context) -> None:
    caller.record_on_span()
    namespace = require_namespace(_field_value(request, field), field)
    caller.require_grant(namespace, field)


class AccessInterceptor(HandlerInterceptor):
    def __init__(self, service: ServiceDescriptor, authorizer: Authorizer, admission: Admission) -> None:
        # An RPC without its namespace field would go unchecked: refuse to start instead.
        unlisted = set(service.methods_by_name) - set(NAMESPACE_FIELDS)
        if unlisted:
            raise ValueError(f"no namespace field listed for {service.full_name} RPCs {sorted(unlisted)}")
        self._prefix = f"/{service.full_name}/"
        self._authorizer = authorizer
        self._admission = admission

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        if not details.method.startswith(self._prefix):
            return handler
        field = NAMESPACE_FIELDS[details.method.removeprefix(self._prefix)]
        try:
            caller = self._authorizer.authenticate(details.invocation_metadata)
            self._admission.admit(caller.key_id)
        except ServiceError as refused:
            return refusing_unread(handler, refused)
        return checked_first(handler, functools.partial(_check_namespace, caller, field))
