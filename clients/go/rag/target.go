package rag

import (
	"net"
	"strings"
)

// IsLoopbackTarget reports whether every address a gRPC target names is on this
// machine, where plaintext cannot be read by anyone else: a Unix socket, the name
// "localhost", or an address in 127.0.0.0/8 or ::1. Targets are read as gRPC
// names them ("host:port", "[v6]:port", "dns:[//authority/]host[:port]",
// "ipv4:a:port,b:port", "unix:path", ...). Anything else, including a name that
// might resolve to loopback, counts as remote. The rule is the Python CLI's
// (rag_cli/targets.py), so both clients agree on where a key may go in plaintext.
func IsLoopbackTarget(target string) bool {
	scheme, rest, found := strings.Cut(target, ":")
	if !found {
		return isLoopbackHost(target)
	}
	switch scheme {
	case "unix", "unix-abstract":
		return true
	case "ipv4", "ipv6":
		for _, address := range strings.Split(rest, ",") {
			if !isLoopbackHost(hostOf(address)) {
				return false
			}
		}
		return true
	case "dns":
		rest = strings.TrimPrefix(rest, "//")
		slash := strings.LastIndex(rest, "/")
		if slash > 0 {
			// An authority: a DNS server of the caller's choice may answer "localhost" with any address.
			return false
		}
		return isLoopbackHost(hostOf(rest[slash+1:]))
	}
	return isLoopbackHost(hostOf(target))
}

// isLoopbackHost: "localhost", or an IP address in 127.0.0.0/8 or ::1 (also as
// ::ffff:127.x.y.z, or in brackets). Any other name may resolve to any address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	// IsLoopback also sees an IPv4-mapped address by its IPv4 part.
	return ip != nil && ip.IsLoopback()
}

// hostOf returns the host of "host", "host:port", "[v6]", "[v6]:port", or a bare IPv6 address.
func hostOf(address string) string {
	if strings.HasPrefix(address, "[") {
		host, _, _ := strings.Cut(address[1:], "]")
		return host
	}
	if strings.Count(address, ":") > 1 {
		return address
	}
	host, _, _ := strings.Cut(address, ":")
	return host
}
