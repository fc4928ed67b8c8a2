"""The parts of bench/embedder.py: texts, CPU accounting, the in-process ceiling, the service, the
ingestion through the whole stack, and the report."""
