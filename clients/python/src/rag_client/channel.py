"""How a client reaches the gateway: TLS or plaintext, the API key, and the channel's service config.

Everything here is decided once, when a client is made, so that a bad setting
(an unreadable certificate, a key about to travel in plaintext) fails there,
naming what to fix, and not at the first call. The sync and the asyncio client
share it; they differ only in which grpc module makes the channel.

Retries are the channel's, declared in its service config: UNAVAILABLE only (a
replica that went away, a connection that dropped), with backoff. Every
gateway RPC is safe to repeat: ingest skips what is already stored, the rest
read or delete. The gateway's own `grpc-retry-pushback-ms` hint is honoured by
gRPC itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from rag_client.targets import is_loopback_target

# The gateway's own deadline for a call that brings none; its longest is 300 s.
DEFAULT_TIMEOUT_S = 60.0
# gRPC caps a retry policy's attempts at 5, and 1 would be no retry.
MAX_ATTEMPTS_RANGE = range(2, 6)

ChannelOptions = Sequence[tuple[str, str | int]]
Metadata = tuple[tuple[str, str], ...]


class ClientConfigError(ValueError):
    """A client setting that cannot work; the message names it."""


class PlaintextKeyRefused(ClientConfigError):
    """An API key would travel unencrypted to another machine."""


@dataclass(frozen=True)
class Tls:
    """TLS towards the gateway.

    ca_file: the CA the gateway's certificate chains to; None trusts gRPC's
    default roots (a certificate from a public CA). cert_file and key_file: a
    client certificate for a gateway that requires one (mTLS), both or neither.
    server_name: the name the certificate is checked against instead of the
    target's host, for a target such as an IP address the certificate does not carry.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ClientConfigError(
                "Tls needs both cert_file and key_file for a client certificate, or neither"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files now: a wrong path fails here, not at the first call."""
        ca = None if self.ca_file is None else _read_pem(self.ca_file, "ca_file")
        if self.cert_file is None or self.key_file is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=_read_pem(self.key_file, "key_file"),
            certificate_chain=_read_pem(self.cert_file, "cert_file"),
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]


def _read_pem(path: Path, setting: str) -> bytes:
    """The file's bytes; gRPC's own error for a bad file comes late and names no file."""
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise ClientConfigError(f"Tls.{setting}={path}: cannot read: {error.strerror}") from error
    if b"-----BEGIN " not in content:
        raise ClientConfigError(f"Tls.{setting}={path}: not a PEM file")
    return content


@dataclass(frozen=True)
class RetryPolicy:
    """How the channel retries a call that failed with UNAVAILABLE, attempts counting the first."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts not in MAX_ATTEMPTS_RANGE:
            raise ClientConfigError(
                f"RetryPolicy.max_attempts must be {MAX_ATTEMPTS_RANGE.start}..{MAX_ATTEMPTS_RANGE.stop - 1}"
                f" (gRPC's limit), got {self.max_attempts}; pass retry=None for no retries"
            )
        if not 0 < self.initial_backoff_s <= self.max_backoff_s or self.backoff_multiplier <= 0:
            raise ClientConfigError(
                "RetryPolicy needs 0 < initial_backoff_s <= max_backoff_s and backoff_multiplier > 0"
            )


DEFAULT_RETRY = RetryPolicy()


def service_config(retry: RetryPolicy | None) -> str:
    """Calls balanced over every address of the target, and UNAVAILABLE retried as `retry` says."""
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry is not None:
        policy = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": _duration(retry.initial_backoff_s),
            "maxBackoff": _duration(retry.max_backoff_s),
            "backoffMultiplier": retry.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config["methodConfig"] = [{"name": [{}], "retryPolicy": policy}]
    return json.dumps(config)


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON: decimal seconds with an 's'."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True)
class Connection:
    """What a channel to the gateway is made of, checked."""

    credentials: grpc.ChannelCredentials | None  # None: plaintext
    options: ChannelOptions
    metadata: Metadata = ()


def connection(
    target: str,
    *,
    api_key: str | None,
    tls: Tls | None,
    retry: RetryPolicy | None,
    allow_plaintext_key: bool,
) -> Connection:
    """Raises PlaintextKeyRefused for a key over plaintext to another machine unless allowed,
    and ClientConfigError for TLS files that cannot be read."""
    if api_key and tls is None and not allow_plaintext_key and not is_loopback_target(target):
        raise PlaintextKeyRefused(
            f"refusing to send the API key in plaintext to {target}: pass tls=Tls(ca_file=...) to connect"
            " over TLS (a key goes in plaintext only to 127.0.0.0/8, ::1, localhost and unix: targets),"
            " or allow_plaintext_key=True on a network you trust"
        )
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config(retry)),
        ("grpc.enable_retries", 1 if retry is not None else 0),
    ]
    credentials = None
    if tls is not None:
        credentials = tls.credentials()
        options += tls.channel_options()
    # The header the gateway reads (it also accepts x-api-key).
    metadata: Metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return Connection(credentials, options, metadata)
