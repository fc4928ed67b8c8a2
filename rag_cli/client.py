"""The CLI's connection to the gateway: the light client (rag_client), made from the CLI's settings.

rag_client decides everything about the channel, as for any other program: TLS,
the API key and where it may travel (over TLS, or in plaintext only to a target
on this machine), the retry of UNAVAILABLE, each call's deadline, and failures
as RagError. What the CLI adds is its own words: its settings are environment
variables (rag_cli/settings.py), so a setting the client refuses is named as
the variable to set, not as the client's argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rag_cli.settings import TLS_CA_FILE_VARIABLE, TLS_PREFIX
from rag_client import AsyncRagClient, ClientConfigError, PlaintextKeyRefused, RagClient, Tls

Client = TypeVar("Client", RagClient, AsyncRagClient)

# rag_client names a TLS file by its argument ("Tls.ca_file=..."); the CLI by its variable.
_TLS_VARIABLES = {
    f"Tls.{name}=": f"{TLS_PREFIX}{name.upper()}=" for name in ("ca_file", "cert_file", "key_file")
}


def gateway_client(target: str, tls: Tls | None, api_key: str | None, timeout_s: float) -> RagClient:
    """A blocking client of the gateway at `target`; timeout_s is every call's deadline.

    Raises PlaintextKeyRefused (a ValueError) for an API key over plaintext to a
    target off this machine, and ClientConfigError for TLS files it cannot read,
    each naming the variable to set.
    """
    return _made(RagClient, target, tls, api_key, timeout_s)


def async_gateway_client(
    target: str, tls: Tls | None, api_key: str | None, timeout_s: float
) -> AsyncRagClient:
    """gateway_client for asyncio; make it inside the event loop that uses it."""
    return _made(AsyncRagClient, target, tls, api_key, timeout_s)


def _made(
    kind: Callable[..., Client], target: str, tls: Tls | None, api_key: str | None, timeout_s: float
) -> Client:
    try:
        return kind(target, api_key=api_key, tls=tls, timeout_s=timeout_s)
    except PlaintextKeyRefused as refused:
        raise PlaintextKeyRefused(
            f"refusing to send the API key in plaintext to {target}: set {TLS_CA_FILE_VARIABLE} to the CA"
            " file of the gateway's certificate to connect over TLS (a key goes in plaintext only to"
            " 127.0.0.0/8, ::1, localhost and unix: targets)"
        ) from refused
    except ClientConfigError as error:
        raise ClientConfigError(_in_cli_terms(str(error))) from error


def _in_cli_terms(message: str) -> str:
    for argument, variable in _TLS_VARIABLES.items():
        if message.startswith(argument):
            return variable + message.removeprefix(argument)
    return message
