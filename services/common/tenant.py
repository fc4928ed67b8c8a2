"""The tenant of a gateway call: the namespace the retriever lets it touch.

The gateway builds a Tenant from the request's namespace only after its access
check let the call through (gateway/access.py), and every retriever call it makes
for the request carries it, authentication on or off:

- on, the key was checked to grant exactly this namespace, so the call touches
  what the caller may touch and nothing more;
- off, any namespace may be used, but a request still names one: its retriever
  calls are confined to it, so a gateway mistake that sent another namespace is
  refused at the retriever rather than served from someone else's documents.

It reaches the retriever signed: the gateway's signing interceptor
(services/common/internal_auth.py) moves it into the call's token, whose
namespaces claim is the only thing the retriever takes a tenant from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Where every retriever request names the namespace it touches.
TENANT_FIELD = "namespace"

# Carries a call's tenant from where the call is made to the signing interceptor
# of its channel, which removes it: it is never sent.
SIGN_NAMESPACE_KEY = "x-rag-sign-namespace"

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tenant:
    """The namespace a gateway call works in, handed to every retriever call it makes."""

    namespace: str

    def metadata(self) -> Metadata:
        """The metadata of a retriever call made for this tenant, for its channel to sign."""
        return ((SIGN_NAMESPACE_KEY, self.namespace),)


def namespaces_to_sign(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> tuple[list[tuple[str, str | bytes]], Sequence[str]]:
    """A call's metadata without its tenant entries, and the namespaces those named."""
    kept: list[tuple[str, str | bytes]] = []
    namespaces: list[str] = []
    for name, value in metadata or ():
        if name == SIGN_NAMESPACE_KEY:
            namespaces.append(value.decode() if isinstance(value, bytes) else value)
        else:
            kept.append((name, value))
    return kept, namespaces
