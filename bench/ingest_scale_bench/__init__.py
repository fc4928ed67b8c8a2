"""The parts of bench/ingest_scale.py: the corpus, the deployment with its pinned replicas,
the measured rounds and the report."""
