#!/usr/bin/env bash
# Installs the tools the interop/scale-out/Triton tests and benchmarks use: redis-server and haproxy (Debian
# packages), the Go/Node tools (pinned) into .tools/bin and client/node/node_modules, and perf_analyzer with
# the newer glibc it needs into .tools/.
# Idempotent: a tool already there is skipped, so a second run takes about a second.
# Needs apt-get (as root, or sudo), Go, Node and npm; modules come from the Go module proxy and packages from npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

# Pinned versions: change them here (and regenerate the Go stubs with `make proto` for the protoc plugins).
GHZ_VERSION=v0.121.0
GRPCURL_VERSION=v1.9.4
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

export GOBIN="$ROOT/.tools/bin"
mkdir -p "$GOBIN"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "install-tools: '$1' is required but not on PATH" >&2; exit 1; }
}
# Debian packages: redis-server (the shared state store of the scale-out tests) and haproxy (the affinity proxy),
# in one apt step, only when one of them is missing.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]]; then SUDO=(); else need sudo; SUDO=(sudo); fi
  echo "install-tools: apt-get install redis-server haproxy"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server haproxy >/dev/null
fi

need go
need node
need npm

# go_tool BINARY PACKAGE VERSION: `go install PACKAGE@VERSION` unless GOBIN/BINARY was built from that version.
go_tool() {
  local bin="$1" pkg="$2" version="$3"
  if [[ -x "$GOBIN/$bin" ]] && go version -m "$GOBIN/$bin" 2>/dev/null | awk '$1 == "mod" {print $3}' | grep -qx "$version"; then
    return
  fi
  echo "install-tools: go install $pkg@$version"
  go install "$pkg@$version"
}

go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"

# The Go client's dependencies, compiled once into the build cache so the interop tests do not spend a
# minute compiling gRPC (a no-op, under a second, when the caches have them). -run '^$' runs no test.
(cd client/go && go mod download && go build ./... && go test -run '^$' ./... >/dev/null)

# The Node client's packages, exactly as package-lock.json says; skipped while the lock file is unchanged.
stamp=client/node/node_modules/.statestream-lock.sha256
want="$(sha256sum client/node/package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "install-tools: npm ci in client/node"
  (cd client/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

# perf_analyzer (Triton's load generator) with the newer glibc it needs, for the Triton protocol tests and bench.
bash scripts/install-perf-analyzer.sh

echo "install-tools: ok ($(redis-server --version | cut -d' ' -f1-3), $(haproxy -v | head -1 | cut -d' ' -f1-3), ghz $GHZ_VERSION, grpcurl $GRPCURL_VERSION, protoc-gen-go $PROTOC_GEN_GO_VERSION," \
  "protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION, perf_analyzer, node packages from client/node/package-lock.json)"
