#!/usr/bin/env bash
# Installs everything the test suite needs that the machine image does not have.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-nextest >/dev/null || { echo "cargo-nextest is required" >&2; exit 1; }
