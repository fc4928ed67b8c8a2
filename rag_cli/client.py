"""The CLI's connection to the gateway: TLS (settings: rag_cli/settings.py) and the API key.

The key is a bearer credential: whoever reads it can use it. So it is attached
here, where the channel is made, and only to a channel that is either TLS or to
a target on this machine (rag_cli/targets.py); a plaintext channel to anywhere
else with a key is refused before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from rag_cli.settings import TLS_CA_FILE_VARIABLE
from rag_cli.targets import is_loopback_target
from services.common.channel_config import service_config
from services.common.tls import ClientTls


class PlaintextKeyRefused(ValueError):
    """An API key would travel unencrypted to another machine."""


def gateway_channel(target: str, tls: ClientTls | None, api_key: str | None = None) -> grpc.Channel:
    """A channel to the gateway that retries UNAVAILABLE, like the gateway's own channels.

    With api_key, every call carries it; raises PlaintextKeyRefused when the
    channel would be plaintext (no TLS) to a target off this machine.
    """
    if api_key and tls is None and not is_loopback_target(target):
        raise PlaintextKeyRefused(
            f"refusing to send the API key in plaintext to {target}: set {TLS_CA_FILE_VARIABLE} to the CA"
            " file of the gateway's certificate to connect over TLS (a key goes in plaintext only to"
            " 127.0.0.0/8, ::1, localhost and unix: targets)"
        )
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
    ]
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.channel_options()])
    return grpc.intercept_channel(channel, _ApiKey(api_key)) if api_key else channel


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds 'authorization: Bearer <key>' to every call."""

    def __init__(self, key: str) -> None:
        self._metadata = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._metadata])

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)
