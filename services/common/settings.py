"""Settings shared by every service; each service extends ServerSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.tls import ServerTls, TlsConfigError, check_pair

MiB = 1024 * 1024


class ServerSettings(BaseSettings):
    """How a service listens and stops. Subclasses set an env_prefix."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 in containers.")
    port: int = Field(ge=0, le=65535)
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_period_s: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(64 * MiB, ge=MiB)
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
