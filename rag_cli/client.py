"""The CLI's connection to the gateway."""

from __future__ import annotations

import grpc

from services.common.channel_config import service_config


def gateway_channel(target: str) -> grpc.Channel:
    """A channel to the gateway that retries UNAVAILABLE, like the gateway's own channels."""
    options = [("grpc.service_config", service_config()), ("grpc.enable_retries", 1)]
    return grpc.insecure_channel(target, options=options)
