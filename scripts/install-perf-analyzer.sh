#!/usr/bin/env bash
# Installs Triton's perf_analyzer (pinned) into .tools/bin/perf_analyzer, runnable on a glibc older than it needs.
# The perf-analyzer 2.60.0 wheel is built for glibc 2.38 (manylinux_2_38); Debian bookworm has 2.36. So the wheel's
# binary is unpacked beside Debian trixie's libc6, libstdc++6 and libgcc-s1 (pinned .debs fetched with apt-get
# through a private sources list and state folder: the system's apt configuration and lists are untouched), and
# .tools/bin/perf_analyzer starts it through that libc's own loader. Nothing is installed system-wide.
# Idempotent: skipped while the stamp matches the pins (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PERF_ANALYZER_VERSION=2.60.0
# Debian trixie (13) packages; apt verifies them against the archive key the system already trusts.
TRIXIE_PACKAGES=("libc6=2.41-12+deb13u4" "libstdc++6=14.2.0-19" "libgcc-s1=14.2.0-19")
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=http://deb.debian.org/debian
PYTHON="${PYTHON:-python3}"

TOOLS="$ROOT/.tools"
PA_DIR="$TOOLS/perf_analyzer"
TRIXIE="$TOOLS/trixie"
APT_DIR="$TOOLS/apt-trixie"
WRAPPER="$TOOLS/bin/perf_analyzer"
STAMP="$TOOLS/perf_analyzer.stamp"
WANT="perf-analyzer==$PERF_ANALYZER_VERSION ${TRIXIE_PACKAGES[*]}"

if [[ -x "$WRAPPER" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-perf-analyzer: '$tool' is required" >&2; exit 1; }
done
[[ -f "$KEYRING" ]] || { echo "install-perf-analyzer: $KEYRING is missing (package debian-archive-keyring)" >&2; exit 1; }

# 1. The wheel (a static-ish C++ binary inside a Python wheel), for its platform tag whatever this machine is.
rm -rf "$PA_DIR" && mkdir -p "$PA_DIR" "$TOOLS/bin"
echo "install-perf-analyzer: pip download perf-analyzer==$PERF_ANALYZER_VERSION"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_38_x86_64 -d "$PA_DIR/wheel" "perf-analyzer==$PERF_ANALYZER_VERSION"
"$PYTHON" - "$PA_DIR" "$PA_DIR"/wheel/perf_analyzer-*.whl <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[2]).extract("perf_analyzer/bin/perf_analyzer", sys.argv[1])
PY
chmod +x "$PA_DIR/perf_analyzer/bin/perf_analyzer"

# 2. trixie's C and C++ runtimes, through apt with private state only.
rm -rf "$APT_DIR" "$TRIXIE" && mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/debs" "$TRIXIE"
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" > "$APT_DIR/sources.list"
APT=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
     -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "APT::Sandbox::User=root"
     -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
     -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
     -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
     -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
     -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
     -o "Acquire::Languages=none")
echo "install-perf-analyzer: apt-get download ${TRIXIE_PACKAGES[*]} (Debian trixie, private apt state in $APT_DIR)"
apt-get "${APT[@]}" -qq update
if ! (cd "$APT_DIR/debs" && apt-get "${APT[@]}" -qq download "${TRIXIE_PACKAGES[@]}"); then
  # A Debian point release removes the superseded version from the mirror: say which one is current now.
  for p in "${TRIXIE_PACKAGES[@]}"; do
    echo "  ${p%%=*}: pinned ${p#*=}, trixie has $(apt-cache "${APT[@]}" policy "${p%%=*}" | awk '/Candidate/ {print $2}')" >&2
  done
  echo "install-perf-analyzer: a pinned .deb is gone from the mirror; update TRIXIE_PACKAGES in $0" >&2
  exit 1
fi
for deb in "$APT_DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$TRIXIE"; done

# 3. The wrapper: trixie's loader, trixie's libraries first, the system's for the rest (libssl, libz).
LIBS="$TRIXIE/usr/lib/x86_64-linux-gnu"
cat > "$WRAPPER" <<EOF
#!/bin/sh
# perf_analyzer $PERF_ANALYZER_VERSION through Debian trixie's glibc (written by scripts/install-perf-analyzer.sh).
exec "$LIBS/ld-linux-x86-64.so.2" --library-path "$LIBS:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \\
  "$PA_DIR/perf_analyzer/bin/perf_analyzer" "\$@"
EOF
chmod +x "$WRAPPER"
"$WRAPPER" --version
rm -rf "$APT_DIR/lists" "$APT_DIR/cache" "$PA_DIR/wheel"
echo "$WANT" > "$STAMP"
echo "install-perf-analyzer: ok ($WRAPPER)"
