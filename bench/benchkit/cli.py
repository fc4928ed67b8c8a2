"""The command-line pieces every benchmark shares."""

from __future__ import annotations

import argparse
from pathlib import Path

# SciFact in BEIR format, beside the repository (read in place, never copied into it).
DEFAULT_SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "scifact"


def parser(description: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the script's docstring as written."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
