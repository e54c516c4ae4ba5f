// Package livetest finds the live server the tests run against.
package livetest

import (
	"os"
	"strings"
	"testing"
)

// Target is the address in STATESTREAM_TARGET. Without it the test is skipped on a developer's
// machine and fails under CI (CI=true or STATESTREAM_NO_SKIP=1): a required test must not go quiet.
func Target(t testing.TB) string {
	t.Helper()
	target := os.Getenv("STATESTREAM_TARGET")
	if target != "" {
		return target
	}
	const msg = "STATESTREAM_TARGET is not set: start a server (statestream-server --models models/) and " +
		"set STATESTREAM_TARGET=host:port, or run tests/test_interop.py, which does both"
	if strings.EqualFold(os.Getenv("CI"), "true") || os.Getenv("STATESTREAM_NO_SKIP") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Model is the model the tests use: STATESTREAM_MODEL, default "demo".
func Model() string {
	if m := os.Getenv("STATESTREAM_MODEL"); m != "" {
		return m
	}
	return "demo"
}
