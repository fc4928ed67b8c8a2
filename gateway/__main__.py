"""python -m gateway: settings from GATEWAY_* environment variables."""

from __future__ import annotations

import asyncio

from gateway.config import GatewaySettings
from gateway.server import run
from services.common.telemetry import configure_logging, setup_tracing


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings, setup_tracing("rag-gateway")))


if __name__ == "__main__":
    main()
