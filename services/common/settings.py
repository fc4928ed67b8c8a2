"""Settings shared by every service; each service extends ServerSettings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
