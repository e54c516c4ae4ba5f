"""Test and bench harness: server and Redis subprocesses on loopback ports."""
