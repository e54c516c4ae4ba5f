#!/usr/bin/env bash
# ghz: a short StreamSteps load. Each call is one bidirectional stream of 10 steps on the worker's own session
# ("ghz-stream-" + worker id, opened by its first step). Run from the repository root; set TARGET to host:port.
# Extra arguments go to ghz (e.g. -O json).
set -euo pipefail
TARGET="${TARGET:-localhost:50051}"

ghz --insecure \
  --proto proto/statestream/v1/statestream.proto \
  --metadata '{"x-session-id": "ghz-stream-{{.WorkerID}}"}' \
  --call statestream.v1.StateStreamService.StreamSteps \
  -d '{"step": {"session_id": "ghz-stream-{{.WorkerID}}", "model": "demo", "open_if_missing": true, "input": [0.1, 0.2, 0.3]}}' \
  --stream-call-count 10 \
  -c 4 -n 40 \
  "$@" "$TARGET"
