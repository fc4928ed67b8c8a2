package rag

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
)

func TestAKeyIsNotSentInPlaintextToAnotherMachine(t *testing.T) {
	for _, target := range remoteTargets {
		client, err := Dial(target, Options{APIKey: "rag_team-a_not-a-real-secret"})
		if !errors.Is(err, ErrPlaintextKey) {
			t.Errorf("Dial(%q) with a key and no TLS: err = %v, want ErrPlaintextKey", target, err)
		}
		if client != nil {
			client.Close()
		}
	}
}

func TestPlaintextIsAllowedToLoopbackWithAKeyAndAnywhereWithout(t *testing.T) {
	for target, options := range map[string]Options{
		"127.0.0.1:50050":       {APIKey: "rag_team-a_not-a-real-secret"},
		"rag.example.com:50050": {},
	} {
		client, err := Dial(target, options)
		if err != nil {
			t.Fatalf("Dial(%q): %v", target, err)
		}
		client.Close()
	}
}

func TestBadTLSFilesFailTheDial(t *testing.T) {
	folder := t.TempDir()
	notPEM := filepath.Join(folder, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		options Options
		want    string
	}{
		"missing CA":         {Options{CAFile: filepath.Join(folder, "absent.crt")}, "CA file"},
		"CA not PEM":         {Options{CAFile: notPEM}, "no PEM certificate"},
		"cert without a key": {Options{CAFile: notPEM, CertFile: notPEM}, "give both or neither"},
	}
	for name, c := range cases {
		_, err := Dial("localhost:50050", c.options)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", name, err, c.want)
		}
	}
}

func TestCallsWithoutADeadlineGetOneAndOthersKeepTheirs(t *testing.T) {
	var seen time.Time
	var hasDeadline bool
	invoke := func(ctx context.Context, _ string, _, _ interface{}, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		seen, hasDeadline = ctx.Deadline()
		return nil
	}
	timeout := deadline(time.Hour)

	before := time.Now()
	if err := timeout.unary(context.Background(), "/m", nil, nil, nil, invoke); err != nil {
		t.Fatal(err)
	}
	if !hasDeadline || seen.Before(before.Add(time.Hour)) {
		t.Errorf("no deadline given: the call got %v (set: %v), want one an hour from now", seen, hasDeadline)
	}

	own, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, _ := own.Deadline()
	if err := timeout.unary(own, "/m", nil, nil, nil, invoke); err != nil {
		t.Fatal(err)
	}
	if !seen.Equal(want) {
		t.Errorf("the caller's deadline %v was replaced by %v", want, seen)
	}
}

func TestTheKeyGoesAsABearerToken(t *testing.T) {
	metadata, err := bearer{key: "rag_a_b"}.GetRequestMetadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := metadata["authorization"]; got != "Bearer rag_a_b" {
		t.Errorf("authorization = %q, want %q", got, "Bearer rag_a_b")
	}
}
