"""ONNX Runtime session options shared by the services that run models (embedder, retriever's reranker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where a session is made: services/common is imported by the gateway too,
    # whose image has no ONNX Runtime (tests/k8s/test_dockerfile.py).
    import onnxruntime as ort

# ONNX Runtime's worker threads spin-wait for work, holding their cores busy. Within a
# run that is what makes its parallel sections fast; between runs, by default, they
# keep spinning, and a service's runs come as requests do, with gaps between them: the
# cores it spins on are the ones PostgreSQL and the other services need. Stopping the
# spinning when a run ends keeps the first and drops the second. One short text,
# batch 1, on 2 cores (bench/README.md, "search.py"): spinning throughout 2.7 ms and
# 9.6 ms of CPU per run; no spinning at all 4.3 ms and 6.6 ms; spinning stopped after
# each run 2.8 ms and 5.6 ms.
SPINNING_ENTRY = "session.intra_op.allow_spinning"
STOP_SPINNING_AFTER_RUN_ENTRY = "session.force_spinning_stop"


def session_options(*, intra_op_threads: int, spin_between_runs: bool = False) -> ort.SessionOptions:
    """Options for one model's session: `intra_op_threads` per run (0: every core); threads spin
    within a run, and between runs only if asked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(SPINNING_ENTRY, "1")
    options.add_session_config_entry(STOP_SPINNING_AFTER_RUN_ENTRY, "0" if spin_between_runs else "1")
    return options
