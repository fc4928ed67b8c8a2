"""ONNX Runtime session options shared by the services that run models (embedder, retriever's reranker)."""

from __future__ import annotations

import onnxruntime as ort

# ONNX Runtime's worker threads spin-wait after each run for the next one by default,
# holding their cores busy. A service's model calls come as requests do, with gaps
# between them, and the cores it spins on are the ones PostgreSQL and the other
# services need: spinning made the embedder use 12.9 ms of CPU per one-text call
# against 8.1 ms without (bench/README.md, bench/search.py), for no gain in latency.
SPIN_WAIT_ENTRY = "session.intra_op.allow_spinning"


def session_options(*, intra_op_threads: int, spin_wait: bool = False) -> ort.SessionOptions:
    """Options for one model's session: `intra_op_threads` per run (0: every core), spinning only if asked."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(SPIN_WAIT_ENTRY, "1" if spin_wait else "0")
    return options
