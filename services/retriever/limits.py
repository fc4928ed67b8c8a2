"""Limits and defaults only the retriever knows, each written once.

RetrieverSettings take their defaults and bounds from here, and the servicer
and the store check requests against the same numbers, quoting them in their
messages. Limits the gateway enforces as well (document ids, top_k, the empty
delete) live in services.common.limits; those of the schema (dimension, HNSW
build parameters) in schema.py, next to the DDL they shape.
"""

from __future__ import annotations

from typing import Literal

from services.common.limits import MAX_TOP_K
from services.common.validation import require_range

# Dense search: hnsw.ef_search when a request sets none (bench/hnsw.py measures
# recall and latency around it), and the most pgvector accepts.
DEFAULT_EF_SEARCH = 100
MAX_EF_SEARCH = 1000

# A keyword query is a question, not a document; far longer text is a caller bug.
MAX_QUERY_TEXT_CHARS = 10_000

# Reciprocal rank fusion (hybrid.py). The defaults come from SciFact train
# (bench/keyword_leg.py --sweep): rrf_k 2..10 with equal weights all give
# nDCG@10 0.726..0.728, against 0.715 for the customary 60. 10 is the largest k
# on that plateau: a smaller one hands more of the ranking to each leg's first
# few places, which suits SciFact (one or two relevant documents per query) but
# is a narrower bet elsewhere. Weighting either leg up lost; depth 200 gained
# 0.001 for more time per query.
DEFAULT_RRF_K = 10.0
# Far beyond any useful k: 1 / (k + rank) would no longer tell ranks apart.
MAX_RRF_K = 1_000_000.0
DEFAULT_LEG_WEIGHT = 1.0
MAX_LEG_WEIGHT = 1_000_000.0
# Candidates each leg hands to fusion.
DEFAULT_CANDIDATE_DEPTH = 100
MAX_CANDIDATE_DEPTH = 1000

# BM25 (keyword.py): term-frequency saturation k1 and length normalisation b.
# SciFact barely cares (keyword.py), so the textbook values stay.
DEFAULT_BM25_K1 = 1.2
MAX_BM25_K1 = 10.0
DEFAULT_BM25_B = 0.75
# b interpolates between no length normalisation (0) and full (1).
MAX_BM25_B = 1.0

# The rerank stage reorders at most what one search returns, within a budget;
# pairs of query and text longer than its max length (tokens) are truncated.
# 20: the trade-off measured in bench/README.md ("reranker.py"): within the stage's latency target.
DEFAULT_RERANK_CANDIDATES = 20
MAX_RERANK_CANDIDATES = MAX_TOP_K
DEFAULT_RERANK_BUDGET_MS = 1000
MAX_RERANK_BUDGET_MS = 60_000
DEFAULT_RERANK_MAX_LENGTH = 512

# How the cross-encoder's scores make the final order (RETRIEVER_RERANK_FUSION;
# services/retriever/rerank_stage.py applies it, `rag reranker train` validates with it):
# - rrf: reciprocal rank fusion of the fused order and the cross-encoder's, so
#   a candidate both rank well beats one only the cross-encoder likes. It suits
#   a reranker that is good but not always better than the fused order (a small
#   one, or one trained on little data).
# - replace: by the cross-encoder's score alone; the fused order only breaks ties.
# The default is what measured best: on SciFact's held-back train queries a
# reranker trained there scores nDCG@10 0.791 fused with weight 0.5 (0.780 with
# 1) against 0.713 replacing the fused order (0.761) (bench/README.md, "reranker.py").
RerankFusionMode = Literal["replace", "rrf"]
RERANK_FUSIONS: tuple[RerankFusionMode, ...] = ("rrf", "replace")
DEFAULT_RERANK_FUSION: RerankFusionMode = "rrf"
# rrf: the cross-encoder's weight (the fused order's is 1), and k in 1 / (k + rank).
# k 60 is the customary value: both rankings' first few places count, none dominates.
DEFAULT_RERANK_FUSION_WEIGHT = 0.5
DEFAULT_RERANK_FUSION_K = 60.0

# One document.
MAX_CONTENT_HASH_CHARS = 256
MAX_CHUNKS_PER_DOCUMENT = 50_000
# A failure reason is shown to people listing failed documents: a sentence, not a log.
MAX_FAILURE_REASON_CHARS = 2000

# One call.
MAX_DOCUMENTS_PER_UPSERT = 256
MAX_IDS_PER_CALL = 10_000
MAX_FAILURES_PER_CALL = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Relevance feedback (store/feedback.py): judgments in one submission, and the
# text one page of a listing carries at most, besides its last feedback. A
# page of MAX_PAGE_SIZE feedback of MAX_FEEDBACK_ITEMS judgments each would be
# hundreds of MiB; this keeps every page within a client's default 4 MiB
# message limit: the bound plus one feedback of 1000 ids of 256 four-byte
# characters and a question of 4000 is under 2.1 MiB.
MAX_FEEDBACK_ITEMS = 1000
MAX_FEEDBACK_PAGE_BYTES = 1024 * 1024

# A read replica whose replay lags the primary by more than this is taken out
# of rotation until it catches up (store/replicas.py).
DEFAULT_MAX_REPLICA_LAG_MS = 5000
MAX_REPLICA_LAG_MS = 3_600_000

# Connections to the database each replica keeps open at least and at most.
DEFAULT_POOL_MIN_SIZE = 1
DEFAULT_POOL_MAX_SIZE = 10
# How long a call waits for a free pooled connection before it fails with
# UNAVAILABLE (retried by the gateway's channel), rather than queueing for as
# long as its deadline allows behind calls that hold every connection.
DEFAULT_POOL_ACQUIRE_TIMEOUT_S = 10.0
# PostgreSQL's statement_timeout on every pooled connection: a statement
# running longer is cancelled, and the call fails with DEADLINE_EXCEEDED
# instead of holding its connection and locks. PostgreSQL takes at most
# INT_MAX milliseconds; 0, its "no limit", is not offered. Migrations run on a
# connection of their own, without it (they may wait on each other's lock).
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
MAX_STATEMENT_TIMEOUT_MS = 2**31 - 1


def require_ef_search(ef_search: int, field: str = "ef_search") -> int:
    return require_range(ef_search, field, 1, MAX_EF_SEARCH)


def require_page_size(page_size: int, field: str = "page_size") -> int:
    return require_range(page_size, field, 1, MAX_PAGE_SIZE)
