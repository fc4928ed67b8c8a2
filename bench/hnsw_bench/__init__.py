"""The parts of bench/hnsw.py: the synthetic data, loading it, timing the searches, and the report."""
