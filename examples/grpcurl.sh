#!/usr/bin/env bash
# grpcurl against a running server: reflection lists the services (no .proto needed), then GetModel and one Step
# on a session that Step opens itself (open_if_missing). Set TARGET to your server's host:port.
set -euo pipefail
TARGET="${TARGET:-localhost:50051}"

grpcurl -plaintext "$TARGET" list

grpcurl -plaintext -d '{"name": "demo"}' "$TARGET" statestream.v1.StateStreamService/GetModel

grpcurl -plaintext \
  -d '{"session_id": "grpcurl-demo", "model": "demo", "open_if_missing": true, "input": [0.1, 0.2, 0.3]}' \
  "$TARGET" statestream.v1.StateStreamService/Step
