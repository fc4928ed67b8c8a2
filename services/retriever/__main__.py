"""python -m services.retriever: settings from RETRIEVER_* (and DATABASE_URL) environment variables."""

from __future__ import annotations

import asyncio

from services.common.telemetry import configure_logging, setup_tracing
from services.retriever.config import RetrieverSettings
from services.retriever.server import run


def main() -> None:
    settings = RetrieverSettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings, setup_tracing("rag-retriever")))


if __name__ == "__main__":
    main()
