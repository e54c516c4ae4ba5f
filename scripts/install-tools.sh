#!/usr/bin/env bash
# Installs the Go/Node tools the interop tests and benchmarks use (pinned), into .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "tools: nothing to install yet"
