"""Which hosts are this machine's own: one rule for the gateway's start-up and the CLI's key check."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAME = "localhost"


def is_loopback_host(host: str) -> bool:
    """ "localhost", or an IP address in 127.0.0.0/8 or ::1 (also as ::ffff:127.x.y.z, or in brackets).

    Any other name counts as remote: it may resolve to any address.
    """
    if host.lower() == LOOPBACK_NAME:
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
