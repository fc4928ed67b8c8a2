package main

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestUsageErrorsExitTwoBeforeAnyCall(t *testing.T) {
	t.Setenv("RAG_TLS_CA_FILE", "") // plaintext, whatever the caller's environment says
	cases := map[string]struct {
		args []string
		want string
	}{
		"no question":  {[]string{"-gateway", "127.0.0.1:1"}, "no question given"},
		"bad timeout":  {[]string{"-timeout", "0s", "why?"}, "-timeout must be positive"},
		"unknown flag": {[]string{"-bogus", "why?"}, "flag provided but not defined"},
		"key off machine": {[]string{"-gateway", "10.0.0.5:50050", "-api-key", "rag_a_secret", "why?"},
			"refusing to send the API key in plaintext"},
	}
	for name, c := range cases {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%s: exit %d, want %d", name, code, exitUsage)
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: stderr %q does not say %q", name, stderr.String(), c.want)
		}
		if strings.Contains(stderr.String(), "rag_a_secret") {
			t.Errorf("%s: stderr shows the key: %q", name, stderr.String())
		}
	}
}

func TestCodeNamesAreTheSpecificationsSpelling(t *testing.T) {
	for code, want := range map[codes.Code]string{
		codes.Canceled:        "CANCELLED",
		codes.Unauthenticated: "UNAUTHENTICATED",
		codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.Code(42):        "CODE_42",
	} {
		if got := codeName(code); got != want {
			t.Errorf("codeName(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestTheUsageNeverShowsTheKey(t *testing.T) {
	t.Setenv("RAG_API_KEY", "rag_a_secret")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Errorf("-h: exit %d, want 0", code)
	}
	if !strings.Contains(stderr.String(), "-api-key") {
		t.Errorf("-h shows no usage: %q", stderr.String())
	}
	if strings.Contains(stderr.String(), "rag_a_secret") {
		t.Errorf("-h shows the key: %q", stderr.String())
	}
}

func TestTheKeyComesFromTheEnvironmentUnlessGiven(t *testing.T) {
	t.Setenv("RAG_API_KEY", "rag_from_env")
	var stderr bytes.Buffer
	parsed, err := parse([]string{"why?"}, &stderr)
	if err != nil || parsed.options.APIKey != "rag_from_env" {
		t.Errorf("key = %q (err %v), want the variable's", parsed.options.APIKey, err)
	}
	parsed, err = parse([]string{"-api-key", "rag_from_flag", "why?"}, &stderr)
	if err != nil || parsed.options.APIKey != "rag_from_flag" {
		t.Errorf("key = %q (err %v), want the flag's", parsed.options.APIKey, err)
	}
}
