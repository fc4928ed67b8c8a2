"""What the `rag` command reads from the environment, read once, in one place.

RAG_GATEWAY, RAG_NAMESPACE and RAG_API_KEY are the defaults of the global
options. The connection to the gateway is plaintext unless RAG_TLS_CA_FILE names
the CA the gateway's certificate chains to (an API key is sent in plaintext only
to a target on this machine, rag_cli/client.py); RAG_TLS_CERT_FILE and
RAG_TLS_KEY_FILE add a client certificate (mTLS), and RAG_TLS_SERVER_NAME checks
the certificate against that name instead of the target's host. RAG_STATE_DIR is
where writes record their index version for --after-ingest (rag_cli/consistency.py).

Two are the services' own settings, read under the same names: the gateway's
GATEWAY_API_KEYS_FILE is the file `rag keys` edits by default, and DATABASE_URL
makes `rag up` use that PostgreSQL instead of starting an embedded one. An empty
variable counts as unset.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag_cli import consistency
from rag_client import Tls
from services.common.registry import GATEWAY
from services.common.tls import check_pair

PREFIX = "RAG_"
TLS_PREFIX = f"{PREFIX}TLS_"
# The variable that turns TLS on (CliSettings.tls_ca_file), for messages that tell what to set.
TLS_CA_FILE_VARIABLE = f"{TLS_PREFIX}CA_FILE"


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    gateway: str = f"127.0.0.1:{GATEWAY.port}"
    namespace: str = "default"
    api_key: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None
    api_keys_file: Path | None = Field(None, validation_alias=f"{GATEWAY.env_prefix}API_KEYS_FILE")
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")
    # Where `rag ingest` and `rag delete` record their index version for --after-ingest.
    state_dir: Path = Field(default_factory=consistency.default_state_dir)

    @property
    def tls(self) -> Tls | None:
        """TLS towards the gateway, or None for plaintext; a certificate without its key is refused here,
        naming both variables."""
        if self.tls_ca_file is None:
            return None
        check_pair(self.tls_cert_file, self.tls_key_file, TLS_PREFIX)
        return Tls(self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_server_name)
