"""The metadata by which the gateway tells the retriever which namespace a call may touch."""

from __future__ import annotations

from dataclasses import dataclass

# Names the namespaces a retriever call may touch (comma-separated); the
# retriever (services/retriever/servicer.py) refuses any other.
TENANT_HEADER = "x-rag-tenant-namespaces"

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tenant:
    """The namespace a gateway call works in, handed to every retriever call it makes.

    The gateway builds it from the request's namespace only after its access
    check let the call through (gateway/access.py), and every retriever call
    carries it, authentication on or off:

    - on, the key was checked to grant exactly this namespace, so the header
      names what the caller may touch and nothing more;
    - off, any namespace may be used, but a request still names one: the
      header confines the request's retriever calls to it, so a gateway
      mistake that sent another namespace is refused at the retriever rather
      than served from someone else's documents.

    One rule for both modes means no branch on whether keys are configured,
    and the retriever's check runs in every deployment, the local one included.
    """

    namespace: str

    def metadata(self) -> Metadata:
        """The metadata of a retriever call made for this tenant."""
        return ((TENANT_HEADER, self.namespace),)
