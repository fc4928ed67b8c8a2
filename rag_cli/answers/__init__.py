"""`rag eval-answers` and `rag golden`: the answers themselves measured against a golden set."""
