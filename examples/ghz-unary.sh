#!/usr/bin/env bash
# ghz: a short unary Step load. Each worker steps its own session ("ghz-" + worker id), opened by the first
# Step (open_if_missing). Run from the repository root (ghz reads the .proto); set TARGET to host:port.
# Extra arguments go to ghz (e.g. -O json).
set -euo pipefail
TARGET="${TARGET:-localhost:50051}"

ghz --insecure \
  --proto proto/statestream/v1/statestream.proto \
  --metadata '{"x-session-id": "ghz-{{.WorkerID}}"}' \
  --call statestream.v1.StateStreamService.Step \
  -d '{"session_id": "ghz-{{.WorkerID}}", "model": "demo", "open_if_missing": true, "input": [0.1, 0.2, 0.3]}' \
  -c 4 -n 400 \
  "$@" "$TARGET"
