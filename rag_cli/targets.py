"""Which gRPC targets stay on this machine, where plaintext cannot be read by anyone else.

Targets are read as gRPC names them (grpc/grpc doc/naming.md): "host:port",
"[v6]:port", "dns:[//authority/]host[:port]", "ipv4:a:port,b:port",
"ipv6:[a]:port,...", "unix:path", "unix-abstract:name". Loopback means a Unix
socket, the name "localhost", or an address in 127.0.0.0/8 or ::1. Anything else,
including a name that might resolve to loopback, counts as remote: the check
must never call a remote target local.
"""

from __future__ import annotations

from services.common.loopback import is_loopback_host

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


def _host(address: str) -> str:
    """The host of "host", "host:port", "[v6]" or "[v6]:port", or a bare IPv6 address."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") > 1:
        return address
    return address.partition(":")[0]
