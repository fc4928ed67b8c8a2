"""Settings shared by every service; each service extends ServerSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.internal_auth import key_file_variable, read_key
from services.common.tls import ServerTls, TlsConfigError, check_pair

MiB = 1024 * 1024

# The largest message a service takes or sends unless its settings say otherwise;
# the gateway takes far less from its callers (gateway/config.py) and uses this
# towards the services behind it, whose messages (chunk texts with their
# embeddings) are larger than the requests they come from.
DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB


class ServerSettings(BaseSettings):
    """How a service listens and stops. Subclasses set an env_prefix."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 in containers.")
    port: int = Field(ge=0, le=65535)
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_period_s: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=MiB)
    # Calls gRPC serves at once, health checks and reflection included; past it
    # a call is refused with RESOURCE_EXHAUSTED before its request is read. A
    # backstop on the calls (and so the messages) a process holds: the
    # embedder, retriever and generator are called only by gateways, each of
    # which bounds its own calls in flight (GATEWAY_MAX_IN_FLIGHT) and fans
    # each out to a few, so 256 leaves room for several gateways; the gateway
    # sizes its own to its memory (gateway/config.py).
    max_concurrent_rpcs: int = Field(256, ge=1)
    # Clients are asked to reconnect after this long, so that their DNS
    # re-resolution finds replicas added since (gRPC balances per connection).
    max_connection_age_s: float = Field(300.0, gt=0)
    # Calls in flight when a connection reaches that age may run this much
    # longer before it closes; a large ingest can take minutes.
    max_connection_age_grace_s: float = Field(900.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # PEM certificate (chain) and key: set both and the port speaks TLS only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Set, the server asks for a client certificate signed by this CA and
    # refuses connections without one (mTLS).
    tls_client_ca_file: Path | None = None
    # The inner-hop key shared by the four services (services/common/internal_auth.py).
    # Optional here so that the error for a missing one names the variable; a
    # service refuses to start without it (internal_auth_key()).
    internal_auth_key_file: Path | None = None

    @model_validator(mode="after")
    def _tls_files_make_sense(self) -> Self:
        prefix = self._tls_setting_prefix
        check_pair(self.tls_cert_file, self.tls_key_file, prefix)
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise TlsConfigError(f"{prefix}CLIENT_CA_FILE needs {prefix}CERT_FILE and {prefix}KEY_FILE")
        return self

    @property
    def _tls_setting_prefix(self) -> str:
        return f"{self.model_config.get('env_prefix', '')}TLS_".upper()

    def internal_auth_key(self) -> bytes:
        """The inner-hop key, read now; raises naming the variable when it is unset, unreadable or short."""
        setting = key_file_variable(self.model_config.get("env_prefix", "").upper())
        return read_key(self.internal_auth_key_file, setting)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls(self) -> ServerTls | None:
        """The port's TLS, or None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls(
            self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file, self._tls_setting_prefix
        )
