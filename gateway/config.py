from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.upstream import ChannelPolicy
from services.common.channel_config import LbPolicy
from services.common.limits import MAX_QUESTION_CHARS, MAX_TOP_K
from services.common.registry import EMBEDDER, GATEWAY, GENERATOR, RETRIEVER
from services.common.settings import MiB, ServerSettings
from services.common.tls import ClientTls, TlsConfigError, check_pair

UPSTREAM_TLS_PREFIX = "GATEWAY_UPSTREAM_TLS_"


class GatewaySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix=GATEWAY.env_prefix)

    port: int = Field(GATEWAY.port, ge=0, le=65535)
    # gRPC targets, e.g. "127.0.0.1:50051", "dns:///embedder:50051" (every address
    # the name resolves to, for headless Kubernetes Services) or a fixed list,
    # "ipv4:10.0.0.1:50051,10.0.0.2:50051".
    embedder_target: str = f"127.0.0.1:{EMBEDDER.port}"
    retriever_target: str = f"127.0.0.1:{RETRIEVER.port}"
    generator_target: str = f"127.0.0.1:{GENERATOR.port}"
    # How the channels spread calls over a target's addresses.
    lb_policy: LbPolicy = "round_robin"
    # Keepalive pings on the channels; servers accept one every 10 s at most.
    keepalive_time_s: float = Field(30.0, ge=10)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    # Deadline for a whole call when the caller sets none.
    default_deadline_s: float = Field(60.0, gt=0)
    # Calls worked on at once (health and reflection not counted); past it a
    # call is refused at once with RESOURCE_EXHAUSTED and a retry hint. About
    # what the services behind one gateway serve without queueing long.
    max_in_flight: int = Field(64, ge=1)
    default_top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    # At most what the generator accepts: a longer question would be refused there after the search.
    max_question_chars: int = Field(MAX_QUESTION_CHARS, ge=1, le=MAX_QUESTION_CHARS)
    max_documents_per_request: int = Field(256, ge=1)
    max_document_bytes: int = Field(10 * MiB, ge=1)
    # Chunk texts per batch of an ingest's embedding stream (one EmbedStream call per ingest).
    embed_batch_size: int = Field(64, ge=1, le=256)
    # Batches one ingest's embedding stream has sent and not yet had answered.
    # The embedder works on a few batches of a stream at once (4 by default),
    # so a window of about that keeps it busy without queueing more.
    embed_stream_window: int = Field(4, ge=1, le=64)
    # Answers kept for repeated questions (0 turns the cache off), and for how
    # long. A cached answer is never served after its namespace changed: the
    # key holds the namespace's index version.
    answer_cache_size: int = Field(1000, ge=0)
    answer_cache_ttl_s: float = Field(3600.0, gt=0)
    # API keys (hashed, see gateway/keys.py and `rag keys`), re-read when the
    # file changes. Unset: authentication off, for local use only.
    api_keys_file: Path | None = None
    # TLS towards the embedder, retriever and generator: set the CA their
    # certificates chain to and the channels speak TLS; add a client certificate
    # and key for services that require one (mTLS).
    upstream_tls_ca_file: Path | None = None
    upstream_tls_cert_file: Path | None = None
    upstream_tls_key_file: Path | None = None
    # The name to check the services' certificates against instead of each
    # target's host, e.g. for "ipv4:10.0.0.1:50051,..." lists or a shared certificate.
    upstream_tls_server_name: str | None = None

    @model_validator(mode="after")
    def _upstream_tls_makes_sense(self) -> Self:
        check_pair(self.upstream_tls_cert_file, self.upstream_tls_key_file, UPSTREAM_TLS_PREFIX)
        uses_tls = self.upstream_tls_cert_file is not None or self.upstream_tls_server_name is not None
        if uses_tls and self.upstream_tls_ca_file is None:
            raise TlsConfigError(f"upstream TLS settings need {UPSTREAM_TLS_PREFIX}CA_FILE")
        return self

    @property
    def channel_policy(self) -> ChannelPolicy:
        return ChannelPolicy(
            self.lb_policy, self.keepalive_time_s, self.keepalive_timeout_s, self.upstream_tls
        )

    @property
    def upstream_tls(self) -> ClientTls | None:
        if self.upstream_tls_ca_file is None:
            return None
        return ClientTls(
            self.upstream_tls_ca_file,
            self.upstream_tls_cert_file,
            self.upstream_tls_key_file,
            self.upstream_tls_server_name,
            UPSTREAM_TLS_PREFIX,
        )
