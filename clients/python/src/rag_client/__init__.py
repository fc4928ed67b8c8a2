"""A Python client of the rag-platform gateway: RagClient (blocking) and AsyncRagClient (asyncio).

It depends on grpcio, protobuf and grpcio-status only. The messages are the
gateway contract's generated code, shipped beside this package as `rag.*`
(`from rag.gateway.v1 import gateway_pb2`), the same modules the services use.
"""

from rag_client.aio import AsyncRagClient
from rag_client.channel import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT_S,
    ClientConfigError,
    PlaintextKeyRefused,
    RetryPolicy,
    Tls,
)
from rag_client.client import RagClient
from rag_client.documents import document_from_path, file_document, text_document
from rag_client.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT_S",
    "AsyncRagClient",
    "ClientConfigError",
    "DeadlineExceeded",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PlaintextKeyRefused",
    "RagClient",
    "RagError",
    "ResourceExhausted",
    "RetryPolicy",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "document_from_path",
    "file_document",
    "text_document",
]
