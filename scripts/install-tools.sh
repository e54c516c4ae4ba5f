#!/usr/bin/env bash
# Installs the tools the interop/scale-out/Triton tests and benchmarks use: redis-server and haproxy (Debian
# packages, the suite's current versions), the Go/Node tools (pinned: the Go module proxy and npm keep every
# version) into .tools/bin and client/node/node_modules, and perf_analyzer into .tools/.
#
# Each tool is one step. A step that fails prints the tool, the cause and the fix, and records them in
# .tools/failed/<tool>; the tests that need that tool fail with that message (tests/conftest.py require_tool)
# while every other test still runs. `--keep-going` (what `make test` uses) exits 0 after a failed step so the
# suite runs and reports; without it the script exits 1 when any step failed.
# Idempotent: a tool already there is skipped, so a second run takes about a second.
# Needs apt-get (as root, or sudo) for the two Debian packages, Go, Node and npm.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
KEEP_GOING=0
[[ "${1:-}" == "--keep-going" ]] && KEEP_GOING=1

# Pinned versions: change them here (and regenerate the Go stubs with `make proto` for the protoc plugins).
GHZ_VERSION=v0.121.0
GRPCURL_VERSION=v1.9.4
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

TOOLS="${STATESTREAM_TOOLS_DIR:-$ROOT/.tools}"  # tests/test_install_scripts.py installs elsewhere
export GOBIN="$TOOLS/bin"
FAILED_DIR="$TOOLS/failed"
mkdir -p "$GOBIN" "$FAILED_DIR"
FAILURES=()

# step TOOL FIX COMMAND...: run COMMAND; on failure record TOOL, the cause (the command's last lines) and FIX.
step() {
  local tool="$1" fix="$2" log rc
  shift 2
  log="$(mktemp)"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if ((rc == 0)); then
    rm -f "$FAILED_DIR/$tool" "$log"
    return 0
  fi
  {
    echo "install of '$tool' failed (scripts/install-tools.sh)"
    echo "cause: $(grep -v '^\s*$' "$log" | tail -3 | tr '\n' ' ')"
    echo "fix: $fix"
  } > "$FAILED_DIR/$tool"
  rm -f "$log"
  echo "install-tools: FAILED $tool" >&2
  sed 's/^/  /' "$FAILED_DIR/$tool" >&2
  FAILURES+=("$tool")
  return 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "'$1' is required but not on PATH" >&2; return 1; }
}

# Debian packages: redis-server (the shared state store of the scale-out tests) and haproxy (the affinity proxy),
# unversioned (the suite's current version), in one apt step, only when one of them is missing.
apt_packages() {
  command -v redis-server >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 && return 0
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then need sudo || return 1; sudo=(sudo); fi
  echo "install-tools: apt-get install redis-server haproxy"
  "${sudo[@]}" apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends redis-server haproxy >/dev/null
}
APT_FIX="run as root (or with sudo) on a Debian/Ubuntu machine with the archive reachable: apt-get install redis-server haproxy"
if step redis-server "$APT_FIX" apt_packages; then
  rm -f "$FAILED_DIR/haproxy"
else
  cp "$FAILED_DIR/redis-server" "$FAILED_DIR/haproxy"; FAILURES+=(haproxy)
fi

# go_tool BINARY PACKAGE VERSION: `go install PACKAGE@VERSION` unless GOBIN/BINARY was built from that version.
go_tool() {
  local bin="$1" pkg="$2" version="$3"
  need go || return 1
  if [[ -x "$GOBIN/$bin" ]] && go version -m "$GOBIN/$bin" 2>/dev/null | awk '$1 == "mod" {print $3}' | grep -qx "$version"; then
    return 0
  fi
  echo "install-tools: go install $pkg@$version"
  go install "$pkg@$version"
}
GO_FIX="install Go (go.dev/dl) and check that the Go module proxy is reachable (go env GOPROXY), then run \`make tools\`"
step protoc-gen-go "$GO_FIX" go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
step protoc-gen-go-grpc "$GO_FIX" go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
step grpcurl "$GO_FIX" go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
step ghz "$GO_FIX" go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"

# The Go client's dependencies, compiled once into the build cache so the interop tests do not spend a
# minute compiling gRPC (a no-op, under a second, when the caches have them). -run '^$' runs no test.
go_client() {
  need go || return 1
  (cd client/go && go mod download && go build ./... && go test -run '^$' ./... >/dev/null)
}
step go-client "$GO_FIX" go_client

# The Node client's packages, exactly as package-lock.json says; skipped while the lock file is unchanged.
node_packages() {
  need node && need npm || return 1
  local stamp=client/node/node_modules/.statestream-lock.sha256 want
  want="$(sha256sum client/node/package-lock.json | cut -d' ' -f1)"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
  echo "install-tools: npm ci in client/node"
  (cd client/node && npm ci --no-audit --no-fund --loglevel=error) && echo "$want" > "$stamp"
}
step node-client "install Node.js >= 18 with npm and check that the npm registry is reachable, then run \`make tools\`" node_packages

# perf_analyzer (Triton's load generator), for the Triton protocol tests and bench.
step perf_analyzer "see the cause above; scripts/install-perf-analyzer.sh says what it resolved and checked" \
  bash scripts/install-perf-analyzer.sh

if ((${#FAILURES[@]})); then
  echo "install-tools: FAILED: ${FAILURES[*]} (each reason is in .tools/failed/; the tests that need them will fail and say why)" >&2
  ((KEEP_GOING)) && exit 0
  exit 1
fi
echo "install-tools: ok ($(redis-server --version | cut -d' ' -f1-3), $(haproxy -v | head -1 | cut -d' ' -f1-3), ghz $GHZ_VERSION," \
  "grpcurl $GRPCURL_VERSION, protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION," \
  "perf_analyzer ($(tail -1 "$TOOLS/perf_analyzer.stamp")), node packages from client/node/package-lock.json)"
