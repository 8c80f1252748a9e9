#!/bin/sh
# Installs the npm packages of the end-to-end tests (tests/e2e/node: the MCP reference servers
# and the MCP conformance suite) exactly as package-lock.json pins them, when node_modules is
# missing or was installed from another lock file. Needs node and npm, and the npm registry.
set -eu
DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/node"
STAMP="$DIR/node_modules/.agentd-lock-sha256"
WANT="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm-deps: npm is not installed (Node.js 20 or later and npm are needed for the e2e tests)" >&2
  exit 1
fi
echo "npm-deps: npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund)
echo "$WANT" > "$STAMP"
