"""The parts of bench/keyword_leg.py: the corpus, its chunks and embeddings, loading them, the search
runs, their scores, and the parameter sweeps."""
