"""Who gets in, and whether there is room: the checks every GatewayService call passes first.

In this order, the same for every RPC, before its handler validates the rest:
1. the API key (UNAUTHENTICATED): nothing about the request is answered to a
   caller who is not known;
2. the namespace's format (INVALID_ARGUMENT);
3. the key grants the namespace (PERMISSION_DENIED);
4. admission (RESOURCE_EXHAUSTED, gateway/admission.py).
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
from gateway.auth import Authorizer
from services.common.handlers import Handler, HandlerInterceptor, checked_first
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
}


def _field_value(message: Any, path: str) -> str:
    value: str = functools.reduce(getattr, path.split("."), message)
    return value


class AccessInterceptor(HandlerInterceptor):
    def __init__(self, service: ServiceDescriptor, authorizer: Authorizer, admission: Admission) -> None:
        # An RPC without its namespace field would go unchecked: refuse to start instead.
        unlisted = set(service.methods_by_name) - set(NAMESPACE_FIELDS)
        if unlisted:
            raise ValueError(f"no namespace field listed for {service.full_name} RPCs {sorted(unlisted)}")
        self._prefix = f"/{service.full_name}/"
        self._authorizer = authorizer
        self._admission = admission

    def _check(self, field: str, request: Any, context: Context) -> None:
        caller = self._authorizer.authenticate(context.invocation_metadata())
        namespace = require_namespace(_field_value(request, field), field)
        caller.require_grant(namespace, field)
        self._admission.admit(context)

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        if not details.method.startswith(self._prefix):
            return handler
        field = NAMESPACE_FIELDS[details.method.removeprefix(self._prefix)]
        return checked_first(handler, functools.partial(self._check, field))
