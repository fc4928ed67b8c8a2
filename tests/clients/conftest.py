"""Where the light Python client's distribution lives in the repository."""

from __future__ import annotations

from tests.conftest import REPO_ROOT

CLIENT_ROOT = REPO_ROOT / "clients" / "python"
