"""python -m services.generator: settings from GENERATOR_* environment variables."""

from __future__ import annotations

import asyncio

from services.common.telemetry import configure_logging, setup_tracing
from services.generator.config import GeneratorSettings
from services.generator.server import run


def main() -> None:
    settings = GeneratorSettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings, setup_tracing("rag-generator")))


if __name__ == "__main__":
    main()
