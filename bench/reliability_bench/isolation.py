"""Each phase on its own: run with a time limit, its failure recorded as a row, and the stack made
healthy again after it (health.restore), so a phase that breaks the stack fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from benchkit.output import MISS, log
from rag_cli.stack import Stack
from reliability_bench.health import restore
from reliability_bench.postgres_control import EmbeddedPostgres
from reliability_bench.settings import Settings
from reliability_bench.table import Phase, Row

PhaseFunction = Callable[[Stack, Settings], Awaitable[Phase]]

# Far beyond what any phase takes in a full run: a phase still going then is stuck.
PHASE_TIMEOUT_S = 20 * 60.0


def _failed(name: str, error: BaseException) -> Phase:
    return Phase(f"{name}: failed", [Row("error", 0, f"{type(error).__name__}: {error}", verdict=MISS)])


async def run_isolated(
    name: str, function: PhaseFunction, stack: Stack, postgres: EmbeddedPostgres, s: Settings
) -> Phase:
    """The phase's report, with a failing row where it raised, or left the stack broken."""
    log(f"phase {name}")
    try:
        phase = await asyncio.wait_for(function(stack, s), PHASE_TIMEOUT_S)
    except Exception as error:  # the phase fails; the next one still runs
        phase = _failed(name, error)
    try:
        restarted = await restore(stack, postgres)
    except Exception as error:
        phase.rows.append(Row("stack after the phase", 0, f"broken, restart failed: {error}", verdict=MISS))
        return phase
    if restarted:
        log(f"  {name} left the stack broken: restarted {', '.join(restarted)}")
        phase.rows.append(
            Row("stack after the phase", 0, f"broken: {', '.join(restarted)}; restarted", verdict=MISS)
        )
    return phase
