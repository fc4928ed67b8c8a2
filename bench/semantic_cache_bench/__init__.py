"""The parts of bench/semantic_cache.py: SciFact's train claims, their fresh answers through the gateway,
their embeddings, the cache replayed over them, the opposite pairs they hold, and the report."""
