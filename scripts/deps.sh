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
# Node.js and npm run the end-to-end tests' real MCP servers (scripts/npm-deps.sh). A
# Node.js from elsewhere (nodesource) is fine; Debian's packages only when there is none.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing="$missing nodejs npm"
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
