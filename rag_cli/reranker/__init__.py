"""`rag reranker train`: a cross-encoder trained on a namespace's own relevance judgments."""
