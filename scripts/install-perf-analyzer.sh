#!/usr/bin/env bash
# Installs Triton's perf_analyzer (pinned on PyPI, which keeps every version) into .tools/bin/perf_analyzer.
#
# The perf-analyzer 2.60.0 wheel is built for glibc 2.38 (manylinux_2_38).
#  - A machine whose own glibc provides GLIBC_2.38 runs the binary directly: no extra libc.
#  - An older one (Debian bookworm has 2.36) gets Debian trixie's libc6, libstdc++6 and libgcc-s1 unpacked beside the
#    binary, fetched with apt-get through a private sources list and state folder (the system's apt configuration
#    and lists are untouched), and .tools/bin/perf_analyzer starts it through that libc's own loader.
# The trixie packages are NOT pinned: Debian's archive keeps only the current point release of a suite, so a pin on
# one breaks within days. They resolve to the suite's current version; the script then checks the property it needs
# (that libc provides GLIBC_2.38, and the binary starts) and records what it resolved in the stamp.
# Nothing is installed system-wide. Idempotent: skipped while the stamp's wheel matches and the binary starts.
#
# Test hooks (tests/test_install_scripts.py): STATESTREAM_TRIXIE_PIN_TEST=pkg=version asks apt for that exact
# version first (a dropped pin), STATESTREAM_FORCE_SHIPPED_LIBC=1 takes the trixie route on any machine, and
# STATESTREAM_TOOLS_DIR installs elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PERF_ANALYZER_VERSION=2.60.0
NEEDED_GLIBC=GLIBC_2.38                 # the wheel's manylinux_2_38 tag
TRIXIE_PACKAGES=(libc6 libstdc++6 libgcc-s1)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=http://deb.debian.org/debian
PYTHON="${PYTHON:-python3}"

TOOLS="${STATESTREAM_TOOLS_DIR:-$ROOT/.tools}"
PA_DIR="$TOOLS/perf_analyzer"
TRIXIE="$TOOLS/trixie"
APT_DIR="$TOOLS/apt-trixie"
WRAPPER="$TOOLS/bin/perf_analyzer"
STAMP="$TOOLS/perf_analyzer.stamp"

fail() {  # the tool, the cause, the fix: one message
  echo "install-perf-analyzer: FAILED: $1" >&2
  echo "  fix: $2" >&2
  exit 1
}

if [[ -x "$WRAPPER" && -f "$STAMP" ]] && head -1 "$STAMP" | grep -qx "perf-analyzer==$PERF_ANALYZER_VERSION" \
   && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi

# provides_glibc LIBC: true when that libc.so.6 defines the version node NEEDED_GLIBC.
provides_glibc() {
  grep -aq "$NEEDED_GLIBC" "$1" 2>/dev/null
}
system_libc() {
  for f in /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libc.so.6 /lib64/libc.so.6; do
    [[ -f "$f" ]] && { echo "$f"; return; }
  done
}

# 1. The wheel (a C++ binary inside a Python wheel), for its platform tag whatever this machine is.
rm -rf "$PA_DIR" && mkdir -p "$PA_DIR" "$TOOLS/bin"
echo "install-perf-analyzer: pip download perf-analyzer==$PERF_ANALYZER_VERSION"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_38_x86_64 -d "$PA_DIR/wheel" "perf-analyzer==$PERF_ANALYZER_VERSION" \
  || fail "pip could not download perf-analyzer==$PERF_ANALYZER_VERSION from PyPI" \
          "check that PyPI is reachable (pip config, proxy), then run \`make tools\` again"
"$PYTHON" - "$PA_DIR" "$PA_DIR"/wheel/perf_analyzer-*.whl <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[2]).extract("perf_analyzer/bin/perf_analyzer", sys.argv[1])
PY
BIN="$PA_DIR/perf_analyzer/bin/perf_analyzer"
chmod +x "$BIN"

SYSLIBC="$(system_libc)"
if [[ -z "${STATESTREAM_FORCE_SHIPPED_LIBC:-}" && -n "$SYSLIBC" ]] && provides_glibc "$SYSLIBC"; then
  # 2a. This machine's glibc is new enough: run it directly.
  RESOLVED="system libc $SYSLIBC provides $NEEDED_GLIBC"
  cat > "$WRAPPER" <<EOF
#!/bin/sh
# perf_analyzer $PERF_ANALYZER_VERSION on this machine's own glibc (written by scripts/install-perf-analyzer.sh).
exec "$BIN" "\$@"
EOF
else
  # 2b. trixie's C and C++ runtimes at the suite's current versions, through apt with private state only.
  for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is required to fetch Debian trixie's libc ($NEEDED_GLIBC)" \
      "run on a Debian/Ubuntu machine, or on one whose own glibc is >= 2.38"
  done
  [[ -f "$KEYRING" ]] || fail "$KEYRING is missing" "apt-get install debian-archive-keyring"
  rm -rf "$APT_DIR" "$TRIXIE" && mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/debs" "$TRIXIE"
  echo "deb [signed-by=$KEYRING] $MIRROR trixie main" > "$APT_DIR/sources.list"
  APT=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
       -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "APT::Sandbox::User=root"
       -o "Dir::State::status=/dev/null"
       -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
       -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
       -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
       -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
       -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
       -o "Acquire::Languages=none")
  echo "install-perf-analyzer: apt-get update (Debian trixie, private apt state in $APT_DIR)"
  apt-get "${APT[@]}" -qq update || fail "apt-get update of $MIRROR trixie failed" \
    "check that $MIRROR is reachable, then run \`make tools\` again"
  WANTED=()
  for p in "${TRIXIE_PACKAGES[@]}"; do
    version="$(apt-cache "${APT[@]}" policy "$p" | awk '/Candidate:/ {print $2}')"
    [[ -n "$version" && "$version" != "(none)" ]] || fail "trixie has no candidate for $p" \
      "check the mirror ($MIRROR) and that the trixie suite still exists"
    WANTED+=("$p=$version")
  done
  # A test asks for a version the archive no longer has; the script must fall back to the current one.
  if [[ -n "${STATESTREAM_TRIXIE_PIN_TEST:-}" ]]; then
    if (cd "$APT_DIR/debs" && apt-get "${APT[@]}" -qq download "$STATESTREAM_TRIXIE_PIN_TEST" 2>/dev/null); then
      echo "install-perf-analyzer: pin $STATESTREAM_TRIXIE_PIN_TEST is still in the archive"
    else
      echo "install-perf-analyzer: pin $STATESTREAM_TRIXIE_PIN_TEST is gone from the archive; using the current version"
    fi
    rm -f "$APT_DIR"/debs/*.deb
  fi
  echo "install-perf-analyzer: apt-get download ${WANTED[*]}"
  (cd "$APT_DIR/debs" && apt-get "${APT[@]}" -qq download "${WANTED[@]}") \
    || fail "apt-get download ${WANTED[*]} failed" "check that $MIRROR is reachable, then run \`make tools\` again"
  for deb in "$APT_DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$TRIXIE"; done
  LIBS="$TRIXIE/usr/lib/x86_64-linux-gnu"
  provides_glibc "$LIBS/libc.so.6" || fail "trixie's libc6 (${WANTED[0]}) does not provide $NEEDED_GLIBC" \
    "perf-analyzer $PERF_ANALYZER_VERSION needs $NEEDED_GLIBC: point MIRROR/suite in $0 at a suite whose libc has it"
  RESOLVED="trixie ${WANTED[*]}"
  # 3. The wrapper: trixie's loader, trixie's libraries first, the system's for the rest (libssl, libz).
  cat > "$WRAPPER" <<EOF
#!/bin/sh
# perf_analyzer $PERF_ANALYZER_VERSION through Debian trixie's glibc (written by scripts/install-perf-analyzer.sh).
exec "$LIBS/ld-linux-x86-64.so.2" --library-path "$LIBS:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \\
  "$BIN" "\$@"
EOF
  rm -rf "$APT_DIR"
fi
chmod +x "$WRAPPER"
"$WRAPPER" --version >/dev/null 2>&1 || fail "perf_analyzer does not start ($RESOLVED): $("$WRAPPER" --version 2>&1 | head -1)" \
  "run \`$WRAPPER --version\` to see the loader error; a missing system library is named there"
rm -rf "$PA_DIR/wheel"
printf 'perf-analyzer==%s\n%s\n' "$PERF_ANALYZER_VERSION" "$RESOLVED" > "$STAMP"
echo "install-perf-analyzer: ok ($WRAPPER; $RESOLVED)"
