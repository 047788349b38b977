#!/usr/bin/env bash
# Installs everything the test suite needs that the machine image does not have.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-nextest >/dev/null || { echo "cargo-nextest is required" >&2; exit 1; }

# The real CLIs the backends' end-to-end tests drive (see ../shared/spec/real-clis.md), pinned.
# They land in <repo>/.npm-clis/node_modules/.bin/{claude,opencode} (gitignored).
CLAUDE_CODE_VERSION=2.1.330
OPENCODE_VERSION=1.18.33
NPM_CLIS_DIR="$PWD/.npm-clis"
installed_version() {
    # $1 = package name; prints the installed version or nothing.
    local pkg_json="$NPM_CLIS_DIR/node_modules/$1/package.json"
    [ -f "$pkg_json" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$pkg_json" 2>/dev/null || true
}
if [ "$(installed_version @anthropic-ai/claude-code)" = "$CLAUDE_CODE_VERSION" ] \
    && [ "$(installed_version opencode-ai)" = "$OPENCODE_VERSION" ] \
    && [ -x "$NPM_CLIS_DIR/node_modules/.bin/claude" ] \
    && [ -x "$NPM_CLIS_DIR/node_modules/.bin/opencode" ]; then
    echo "claude-code $CLAUDE_CODE_VERSION and opencode-ai $OPENCODE_VERSION already in .npm-clis"
else
    command -v npm >/dev/null || { echo "npm is required to install the test CLIs" >&2; exit 1; }
    mkdir -p "$NPM_CLIS_DIR"
    npm install --prefix "$NPM_CLIS_DIR" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "opencode-ai@$OPENCODE_VERSION"
    "$NPM_CLIS_DIR/node_modules/.bin/claude" --version
fi

# The Claude Code ACP adapter (Zed's; it drives Claude Code through the Agent SDK, which bundles
# its own CLI): the acp backend's second real agent (backends/acp/tests/it/real_claude_acp.rs).
# Pinned; it lands in .npm-clis/node_modules/.bin/claude-agent-acp.
CLAUDE_AGENT_ACP_VERSION=0.23.1
if [ "$(installed_version @zed-industries/claude-agent-acp)" = "$CLAUDE_AGENT_ACP_VERSION" ] \
    && [ -x "$NPM_CLIS_DIR/node_modules/.bin/claude-agent-acp" ]; then
    echo "claude-agent-acp $CLAUDE_AGENT_ACP_VERSION already in .npm-clis"
else
    command -v npm >/dev/null || { echo "npm is required to install the test CLIs" >&2; exit 1; }
    mkdir -p "$NPM_CLIS_DIR"
    npm install --prefix "$NPM_CLIS_DIR" --no-audit --no-fund --loglevel=error \
        "@zed-industries/claude-agent-acp@$CLAUDE_AGENT_ACP_VERSION"
fi

# The official Python MCP SDK: the real MCP client host/tests/it/mcp.rs drives `mcp-server` with.
MCP_PY_VERSION=2.3.0
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("mcp"))' 2>/dev/null)" = "$MCP_PY_VERSION" ]; then
    echo "python mcp $MCP_PY_VERSION already installed"
else
    python3 -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_VERSION"
fi

# The Prometheus project's Python client: host/tests/ops_metrics.rs parses `/metrics` with its
# text parser (prometheus_client.parser.text_string_to_metric_families).
PROMETHEUS_CLIENT_PY_VERSION=0.23.1
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("prometheus_client"))' 2>/dev/null)" = "$PROMETHEUS_CLIENT_PY_VERSION" ]; then
    echo "python prometheus_client $PROMETHEUS_CLIENT_PY_VERSION already installed"
else
    python3 -m pip install --quiet --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_PY_VERSION"
fi

# kubernetes-validate: host/tests/it/deploy_manifests.rs validates deploy/kubernetes/*.yaml with
# it (strictly, against the Kubernetes version pinned there); it brings PyYAML, which that test
# also parses the manifests with.
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; then
    echo "python kubernetes-validate $KUBERNETES_VALIDATE_VERSION already installed"
else
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# componentize-py: host/tests/it/plugins_kit.rs builds the Python guide's WASM plugin with it
# (docs/guides/python-wasm.md). Pinned.
COMPONENTIZE_PY_VERSION=0.25.1
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null)" = "$COMPONENTIZE_PY_VERSION" ]; then
    echo "componentize-py $COMPONENTIZE_PY_VERSION already installed"
else
    python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# componentize-js: host/tests/it/plugins_kit.rs builds the JavaScript guide's WASM plugin with it
# (docs/guides/js-wasm.md). 0.23.0 does not declare its preview2-shim dependency, and with the
# 0.26 shim that jco brings it cannot read the WIT folder (os error 44): 0.17.5 is the one it
# works with. Pinned; it lands in .npm-clis/node_modules/.bin/componentize-js.
COMPONENTIZE_JS_VERSION=0.23.0
PREVIEW2_SHIM_VERSION=0.17.5
if [ "$(installed_version @bytecodealliance/componentize-js)" = "$COMPONENTIZE_JS_VERSION" ] \
    && [ "$(installed_version @bytecodealliance/preview2-shim)" = "$PREVIEW2_SHIM_VERSION" ] \
    && [ -x "$NPM_CLIS_DIR/node_modules/.bin/componentize-js" ]; then
    echo "componentize-js $COMPONENTIZE_JS_VERSION already in .npm-clis"
else
    command -v npm >/dev/null || { echo "npm is required to install componentize-js" >&2; exit 1; }
    mkdir -p "$NPM_CLIS_DIR"
    npm install --prefix "$NPM_CLIS_DIR" --no-audit --no-fund --loglevel=error \
        "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" \
        "@bytecodealliance/preview2-shim@$PREVIEW2_SHIM_VERSION"
fi
