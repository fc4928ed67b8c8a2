"""The CLI's connection to the gateway.

Plaintext unless RAG_TLS_CA_FILE names the CA the gateway's certificate chains
to; RAG_TLS_CERT_FILE and RAG_TLS_KEY_FILE add a client certificate (mTLS), and
RAG_TLS_SERVER_NAME checks the certificate against that name instead of the
target's host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc

from services.common.channel_config import service_config
from services.common.tls import ClientTls

TLS_PREFIX = "RAG_TLS_"


def gateway_channel(target: str) -> grpc.Channel:
    """A channel to the gateway that retries UNAVAILABLE, like the gateway's own channels."""
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
    ]
    tls = tls_from_environment(os.environ)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.channel_options()])


def tls_from_environment(environment: Mapping[str, str]) -> ClientTls | None:
    def path(name: str) -> Path | None:
        value = environment.get(f"{TLS_PREFIX}{name}")
        return Path(value) if value else None

    ca_file = path("CA_FILE")
    if ca_file is None:
        return None
    server_name = environment.get(f"{TLS_PREFIX}SERVER_NAME") or None
    return ClientTls(ca_file, path("CERT_FILE"), path("KEY_FILE"), server_name, TLS_PREFIX)
