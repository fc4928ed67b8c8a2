"""Admission control: the gateway works on at most so many calls at once.

Once the services behind it are saturated, every call admitted on top only
makes all calls slower, until deadlines expire everywhere. Refusing the excess
at once, with RESOURCE_EXHAUSTED and a hint of when to retry, keeps the latency
of the admitted calls bounded and tells clients to back off. The access
interceptor (gateway/access.py) admits a call once its key and namespace are
checked; health checks and reflection never come here, so probes still answer
under overload.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from gateway import instruments
from services.common.errors import ResourceExhausted

# Weight of the newest call in the smoothed call duration that is the retry hint.
_SMOOTHING = 0.1


class Admission:
    """Counts the calls in flight; the gRPC server runs them all on one event loop, so no lock."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._call_s = 0.1  # smoothed duration of admitted calls

    def admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Takes a slot until the call ends, however it ends; raises ResourceExhausted when none is free."""
        if self.in_flight >= self.max_in_flight:
            instruments.record_shed()
            retry_ms = max(10, round(self._call_s * 1000))
            raise ResourceExhausted(
                f"the gateway is at its limit of {self.max_in_flight} calls in flight "
                f"(GATEWAY_MAX_IN_FLIGHT); retry in about {retry_ms} ms",
                retry_after_ms=retry_ms,
            )
        self.in_flight += 1
        started = time.monotonic()

        def release(_: object) -> None:
            self.in_flight -= 1
            self._call_s += _SMOOTHING * (time.monotonic() - started - self._call_s)

        # The stubs type the callback as a class of their own; any callable of one argument is taken.
        context.add_done_callback(release)  # type: ignore[arg-type]
