"""Which gRPC targets stay on this machine, where an API key sent in plaintext cannot be read by anyone else.

Targets are read as gRPC names them (grpc/grpc doc/naming.md): "host:port",
"[v6]:port", "dns:[//authority/]host[:port]", "ipv4:a:port,b:port",
"ipv6:[a]:port,...", "unix:path", "unix-abstract:name". Loopback means a Unix
socket, the name "localhost", or an address in 127.0.0.0/8 or ::1 (also as
::ffff:127.x.y.z). Anything else, including a name that might resolve to
loopback, counts as remote: the check must never call a remote target local.

The `rag` CLI uses this rule too: it connects through this client.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAME = "localhost"
LOCAL_SCHEMES = frozenset({"unix", "unix-abstract"})
ADDRESS_LIST_SCHEMES = frozenset({"ipv4", "ipv6"})


def is_loopback_target(target: str) -> bool:
    """True when every address the target names is on this machine."""
    scheme, _, rest = target.partition(":")
    if scheme in LOCAL_SCHEMES:
        return True
    if scheme in ADDRESS_LIST_SCHEMES:
        return all(is_loopback_host(_host(address)) for address in rest.split(","))
    if scheme == "dns":
        authority, _, name = rest.removeprefix("//").rpartition("/")
        # A DNS server of the caller's choice may answer "localhost" with any address.
        return not authority and is_loopback_host(_host(name))
    return is_loopback_host(_host(target))


def is_loopback_host(host: str) -> bool:
    """ "localhost", or an IP address in 127.0.0.0/8 or ::1 (also as ::ffff:127.x.y.z, or in brackets)."""
    if host.lower() == LOOPBACK_NAME:
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _host(address: str) -> str:
    """The host of "host", "host:port", "[v6]" or "[v6]:port", or a bare IPv6 address."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") > 1:
        return address
    return address.partition(":")[0]
