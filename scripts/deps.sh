#!/bin/sh
# Installs the Debian packages agentd needs to build and test, and nothing else.
# Runs `apt-get update` only when a package cannot be found in the current lists.
set -eu
PKGS="g++ cmake make pkg-config libboost-dev libboost-system-dev libcurl4-openssl-dev \
nlohmann-json3-dev libsqlite3-dev libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev \
libsodium-dev libzstd-dev libssl-dev libseccomp-dev bubblewrap runsc libjemalloc-dev libgtest-dev libgmock-dev libbenchmark-dev curl procps sqlite3 \
clang libclang-rt-14-dev llvm"
# clang, libFuzzer (libclang-rt-14-dev, only a recommendation of clang's) and llvm-symbolizer
# (llvm): the fuzz targets that ctest's fuzz_smoke builds and runs (tests/fuzz/run_fuzz.sh).
# sqlite3: tests tamper with a copy of the database to show the audit log notices.
missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
# npm fetches the end-to-end tests' real MCP servers and the Node.js they run on
# (scripts/npm-deps.sh, pinned in tests/e2e/node/package-lock.json). The tests use that
# Node.js, not the host's: Debian 12's is 18, and the MCP packages need 20.18 or later. Any
# npm does (Debian's brings its own Node.js 18 to run on); Debian's only when there is none.
if ! command -v npm >/dev/null 2>&1; then
  missing="$missing npm"
fi
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends $missing; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends $missing
fi
