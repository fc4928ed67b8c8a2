"""Writes and checks the ONNX export ahead of time: `python -m services.embedder.export_onnx`.

For images with a read-only filesystem: run it at build time with
EMBEDDER_ONNX_CACHE_DIR set, and the embedder finds the export at start-up.
"""

from __future__ import annotations

import logging

from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = EmbedderSettings(backend="onnx")
    model = EmbeddingModel.load(settings)
    logging.getLogger(__name__).info("%s is exported and checked in %s", model.name, settings.onnx_cache_dir)


if __name__ == "__main__":
    main()
