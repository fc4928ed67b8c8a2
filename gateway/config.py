from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.auth import require_keys_unless_local
from gateway.semantic_cache import MIN_SIMILARITY_RANGE
from gateway.upstream import ChannelPolicy
from services.common.channel_config import LbPolicy
from services.common.limits import MAX_METADATA_BYTES, MAX_QUESTION_CHARS, MAX_TOP_K
from services.common.registry import EMBEDDER, GATEWAY, GENERATOR, RETRIEVER
from services.common.settings import DEFAULT_MAX_MESSAGE_BYTES, MiB, ServerSettings
from services.common.tls import ClientTls, TlsConfigError, check_pair

UPSTREAM_TLS_PREFIX = "GATEWAY_UPSTREAM_TLS_"

# What the gateway holds of each admitted request at most (received, decoded, its text read),
# and the process at rest: the terms of GatewaySettings.memory_needed_bytes.
REQUEST_COPIES = 3
PROCESS_BYTES = 80 * MiB


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
    # The longest any call runs: a caller's longer deadline is cut to it, so no
    # call holds its slot, its memory and the services behind for longer.
    max_deadline_s: float = Field(300.0, gt=0)
    # Memory. gRPC receives a call's whole request before its handler runs and
    # holds it until the call ends; decoding copies it and reading its text
    # copies it again (measured: about REQUEST_COPIES times the message per
    # call). Only calls that got past their key and admission are read (the
    # others are refused unread, gateway/access.py), so requests take at most
    #     max_in_flight x max_message_bytes x 3 = 20 x 4 MiB x 3 = 240 MiB,
    # beside the process itself (PROCESS_BYTES, about 80 MiB at rest) and the
    # parse workers (max_concurrent_parses x parse_memory_mib, below). The
    # pod's memory limit must hold memory_needed_bytes (k8s/base/gateway.yaml;
    # tests/k8s/test_workloads.py checks every overlay). Raising one of these
    # means lowering another, or giving the pod more memory.
    max_message_bytes: int = Field(4 * MiB, ge=MiB)
    # Calls worked on at once (health and reflection not counted); past it a
    # call is refused at once with RESOURCE_EXHAUSTED and a retry hint. Sized
    # to the memory above; the services behind one gateway serve about that
    # many without queueing long.
    max_in_flight: int = Field(20, ge=1)
    # Of those, the most one API key may have, so that one key cannot take them
    # all (with authentication off, every caller shares max_in_flight alone).
    # Left at its default, it is lowered with max_in_flight (in_flight_per_key).
    max_in_flight_per_key: int = Field(16, ge=1)
    # Every call gRPC serves at once (past it gRPC itself refuses, with
    # RESOURCE_EXHAUSTED): the admitted ones, and room for health probes,
    # reflection and the calls being refused while the gateway is full, which
    # hold no request. So it must stay above max_in_flight, or probes would
    # fail whenever the gateway is busy.
    max_concurrent_rpcs: int = Field(32, ge=1)
    # Towards the embedder, retriever and generator: their messages (chunk
    # texts with their embeddings) are larger than the requests they come from.
    upstream_max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=MiB)
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
    # Set (a cosine similarity in (0, 1]), a question that misses the answer
    # cache may take the cached answer of another question asked with the
    # same settings whose embedding is at least this similar, unless the two
    # differ in negations, words of direction or numbers
    # (gateway/semantic_cache.py). Off by default, as measured: on SciFact's
    # train claims (bench/semantic_cache.py) no threshold from 0.80 to 0.99
    # served only right answers, even with that guard (22 wrong of 80 hits at
    # 0.80, 5 of 33 at 0.97, 1 of 15 at 0.99): antonyms outside its word lists
    # ("enables" / "represses") are as similar as paraphrases.
    semantic_cache_min_similarity: float | None = None
    # API keys (hashed, see gateway/keys.py and `rag keys`), re-read when the
    # file changes. Unset: authentication off, which the gateway allows only
    # on a loopback host unless allow_unauthenticated says otherwise.
    api_keys_file: Path | None = None
    allow_unauthenticated: bool = False
    # TLS towards the embedder, retriever and generator: set the CA their
    # certificates chain to and the channels speak TLS; add a client certificate
    # and key for services that require one (mTLS).
    upstream_tls_ca_file: Path | None = None
    upstream_tls_cert_file: Path | None = None
    upstream_tls_key_file: Path | None = None
    # The name to check the services' certificates against instead of each
    # target's host, e.g. for "ipv4:10.0.0.1:50051,..." lists or a shared certificate.
    upstream_tls_server_name: str | None = None

    @field_validator("semantic_cache_min_similarity")
    @classmethod
    def _a_cosine_similarity(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(
                f"{cls.variable('semantic_cache_min_similarity')} must be {MIN_SIMILARITY_RANGE}"
                f" (a cosine similarity), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _authentication_on_unless_local(self) -> Self:
        require_keys_unless_local(self.host, self.api_keys_file, self.allow_unauthenticated, self.variable)
        return self

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Self:
        v = self.variable
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError(
                f"{v('default_deadline_s')} ({self.default_deadline_s}) must be at most "
                f"{v('max_deadline_s')} ({self.max_deadline_s})"
            )
        per_key_set = "max_in_flight_per_key" in self.model_fields_set
        if per_key_set and self.max_in_flight_per_key > self.max_in_flight:
            raise ValueError(
                f"{v('max_in_flight_per_key')} ({self.max_in_flight_per_key}) must be at most "
                f"{v('max_in_flight')} ({self.max_in_flight})"
            )
        if self.max_concurrent_rpcs <= self.max_in_flight:
            raise ValueError(
                f"{v('max_concurrent_rpcs')} ({self.max_concurrent_rpcs}) must be more than "
                f"{v('max_in_flight')} ({self.max_in_flight}): health probes need room while the "
                "gateway is full"
            )
        return self

    @model_validator(mode="after")
    def _upstream_tls_makes_sense(self) -> Self:
        check_pair(self.upstream_tls_cert_file, self.upstream_tls_key_file, UPSTREAM_TLS_PREFIX)
        uses_tls = self.upstream_tls_cert_file is not None or self.upstream_tls_server_name is not None
        if uses_tls and self.upstream_tls_ca_file is None:
            raise TlsConfigError(f"upstream TLS settings need {UPSTREAM_TLS_PREFIX}CA_FILE")
        return self

    @property
    def memory_needed_bytes(self) -> int:
        """The most memory the gateway's pod needs: the process, the admitted requests, the parse workers."""
        requests = self.max_in_flight * self.max_message_bytes * REQUEST_COPIES
        return PROCESS_BYTES + requests + self.max_concurrent_parses * self.parse_memory_mib * MiB

    @property
    def in_flight_per_key(self) -> int:
        """The per-key limit in force: never above max_in_flight, where it could not bind."""
        return min(self.max_in_flight_per_key, self.max_in_flight)

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

    # Request caps
    # Metadata as compact JSON; at most the shared limit the retriever enforces.
    max_metadata_bytes: int = Field(MAX_METADATA_BYTES, ge=2, le=MAX_METADATA_BYTES)
    # A file's bytes, per format, checked before it is read; a larger file fails
    # as that document's error. Each binds only where max_message_bytes lets
    # larger files arrive at all.
    max_pdf_bytes: int = Field(32 * MiB, ge=1)
    max_html_bytes: int = Field(8 * MiB, ge=1)
    max_text_file_bytes: int = Field(16 * MiB, ge=1)
    # PDF and HTML are parsed in a worker process each (gateway/extraction.py), at
    # most this many at once (about the CPUs the gateway has), each stopped past
    # this time (the call's deadline stops it sooner) or address space. The pod's
    # memory must hold max_concurrent_parses x parse_memory_mib besides the
    # gateway's own.
    max_concurrent_parses: int = Field(2, ge=1)
    parse_timeout_s: float = Field(30.0, gt=0)
    # Address space (virtual memory) of a worker, about 64 MiB of it the
    # interpreter and the parsers. Measured: a 2000-page text PDF peaks at about
    # 105 MiB; 4 MB of tiny HTML tags would take some 650 MiB, and fail instead.
    parse_memory_mib: int = Field(256, ge=128)

    @staticmethod
    def variable(field: str) -> str:
        """The environment variable of a setting, for messages that name the limit a request met."""
        return f"{GATEWAY.env_prefix}{field.upper()}"
