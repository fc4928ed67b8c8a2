"""gRPC client-channel settings shared by every caller of our services."""

from __future__ import annotations

import json
from typing import Literal

LbPolicy = Literal["round_robin", "pick_first"]


def service_config(lb_policy: LbPolicy = "round_robin") -> str:
    """Load balancing plus a retry of UNAVAILABLE only, with backoff.

    UNAVAILABLE is what a call gets from a replica that is down or a connection
    that went away. Every RPC of ours is safe to repeat (ingest skips what is
    already stored, the rest read or delete), so it is retried; every other
    status is final.
    """
    return json.dumps(
        {
            "loadBalancingConfig": [{lb_policy: {}}],
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )
