"""python -m services.embedder: settings from EMBEDDER_* environment variables."""

from __future__ import annotations

import asyncio
import os

from services.common.telemetry import configure_logging, setup_tracing
from services.embedder.config import EmbedderSettings
from services.embedder.server import run


def main() -> None:
    # Models load from local paths; never reach for a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = EmbedderSettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings, setup_tracing("rag-embedder")))


if __name__ == "__main__":
    main()
