"""The CLI's connection to the gateway (TLS settings: rag_cli/settings.py)."""

from __future__ import annotations

import grpc

from services.common.channel_config import service_config
from services.common.tls import ClientTls


def gateway_channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    """A channel to the gateway that retries UNAVAILABLE, like the gateway's own channels."""
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
    ]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.channel_options()])
