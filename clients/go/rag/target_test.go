package rag

import "testing"

// The same targets as the Python CLI's test (tests/test_cli_client.py): both clients must agree.
var loopbackTargets = []string{
	"127.0.0.1:50050",
	"127.8.9.10:50050",
	"localhost:50050",
	"LOCALHOST",
	"[::1]:50050",
	"::1",
	"[::ffff:127.0.0.1]:50050",
	"dns:///localhost:50050",
	"dns:localhost:50050",
	"ipv4:127.0.0.1:50050,127.0.0.2:50051",
	"ipv6:[::1]:50050",
	"unix:/run/rag/gateway.sock",
	"unix:///run/rag/gateway.sock",
	"unix-abstract:rag-gateway",
}

var remoteTargets = []string{
	"10.0.0.5:50050",
	"192.168.1.20",
	"rag.example.com:50050",
	"localhost.example.com:50050",
	"[2001:db8::1]:50050",
	"0.0.0.0:50050",
	"[::]:50050",
	"dns:///rag.example.com:50050",
	// A DNS server of the caller's choice could answer "localhost" with anything.
	"dns://8.8.8.8/localhost:50050",
	"ipv4:127.0.0.1:50050,10.0.0.5:50050",
	"ipv6:[::1]:50050,[2001:db8::1]:50050",
	"xds:///rag-gateway",
}

func TestLoopbackTargets(t *testing.T) {
	for _, target := range loopbackTargets {
		if !IsLoopbackTarget(target) {
			t.Errorf("IsLoopbackTarget(%q) = false, want true", target)
		}
	}
}

func TestRemoteTargets(t *testing.T) {
	for _, target := range remoteTargets {
		if IsLoopbackTarget(target) {
			t.Errorf("IsLoopbackTarget(%q) = true, want false", target)
		}
	}
}
