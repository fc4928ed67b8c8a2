"""Admission control: the gateway works on at most so many calls at once, and one API key on at most
so many of them.

Once the services behind it are saturated, every call admitted on top only
makes all calls slower, until deadlines expire everywhere. Refusing the excess
at once, with RESOURCE_EXHAUSTED and a hint of when to retry, keeps the latency
of the admitted calls bounded and tells clients to back off.

The per-key limit keeps one key (one tenant, or one runaway client) from taking
every slot: past it, that key's calls are refused while others' still get in.
It applies only with authentication on. Without keys there is no caller
identity to be fair between: a peer address is not one (many clients share a
proxy's or a NAT's, one client spreads over several connections), so every
caller shares the global limit alone.

The access interceptor (gateway/access.py) admits a call once its key is
checked, before its request is read; health checks and reflection never come
here, so probes still answer under overload.
"""

from __future__ import annotations

import asyncio
import time

from gateway import instruments
from services.common.errors import ResourceExhausted

# Weight of the newest call in the smoothed call duration that is the retry hint.
_SMOOTHING = 0.1
IN_FLIGHT_SETTING = "GATEWAY_MAX_IN_FLIGHT"
PER_KEY_SETTING = "GATEWAY_MAX_IN_FLIGHT_PER_KEY"


class Admission:
    """Counts the calls in flight, in all and per key; the gRPC server runs them all on one event loop,
    so no lock."""

    def __init__(self, max_in_flight: int, max_in_flight_per_key: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_key = max_in_flight_per_key
        self.in_flight = 0
        self._per_key: dict[str, int] = {}
        self._call_s = 0.1  # smoothed duration of admitted calls

    def in_flight_for(self, key_id: str) -> int:
        return self._per_key.get(key_id, 0)

    def admit(self, key_id: str | None) -> None:
        """Takes a slot, and one of `key_id`'s, until the task that serves the call ends, however it ends;
        raises ResourceExhausted when none is free. `key_id` is None with authentication off.

        Called while gRPC looks up the call's handler, which it does in the task
        that then serves the call: that task's end is the call's end, also for a
        call whose handler never runs (cancelled before its request arrived, or
        refused by the server's own limit on calls).
        """
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("admit() runs in the task that serves the call")
        if key_id is not None and self.in_flight_for(key_id) >= self.max_in_flight_per_key:
            raise self._refusal(
                f"API key {key_id!r} is at its limit of {self.max_in_flight_per_key} calls in flight "
                f"({PER_KEY_SETTING})"
            )
        if self.in_flight >= self.max_in_flight:
            raise self._refusal(
                f"the gateway is at its limit of {self.max_in_flight} calls in flight ({IN_FLIGHT_SETTING})"
            )
        self.in_flight += 1
        if key_id is not None:
            self._per_key[key_id] = self.in_flight_for(key_id) + 1
        started = time.monotonic()

        def release(_: object) -> None:
            self.in_flight -= 1
            if key_id is not None:
                left = self._per_key.pop(key_id) - 1
                if left:
                    self._per_key[key_id] = left
            self._call_s += _SMOOTHING * (time.monotonic() - started - self._call_s)

        task.add_done_callback(release)

    def _refusal(self, reason: str) -> ResourceExhausted:
        instruments.record_shed()
        retry_ms = max(10, round(self._call_s * 1000))
        return ResourceExhausted(f"{reason}; retry in about {retry_ms} ms", retry_after_ms=retry_ms)
