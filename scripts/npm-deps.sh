#!/bin/sh
# Installs the npm packages of the end-to-end tests (tests/e2e/node: the MCP reference servers,
# the MCP conformance suite, and the Node.js build they run on, node_modules/.bin/node)
# exactly as package-lock.json pins them, when node_modules is missing or was installed from
# another lock file. Needs npm (any version the lock file's format allows) and the npm
# registry.
set -eu
DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/node"
STAMP="$DIR/node_modules/.agentd-lock-sha256"
WANT="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm-deps: npm is not installed (scripts/deps.sh installs it)" >&2
  exit 1
fi
echo "npm-deps: npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund)
# Older npm (Debian 12's 9.2) installs the Node.js package but links no bin named "node":
# the link the tests use is made here.
case "$(uname -m)" in
  x86_64) ARCH=x64 ;;
  aarch64) ARCH=arm64 ;;
  *) ARCH="$(uname -m)" ;;
esac
mkdir -p "$DIR/node_modules/.bin"
ln -sfn "../node-linux-$ARCH/bin/node" "$DIR/node_modules/.bin/node"
if ! "$DIR/node_modules/.bin/node" --version >/dev/null; then
  echo "npm-deps: the pinned Node.js (node-linux-*) did not install for this machine ($(uname -m))" >&2
  exit 1
fi
echo "$WANT" > "$STAMP"
