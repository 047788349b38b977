#!/usr/bin/env bash
# The project's test command: formatting, lints, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check

# Lints and the test build are one compilation. `cargo clippy` runs clippy-driver as the
# workspace's rustc wrapper over a check build; here it wraps the real build, so every
# dependency is compiled once (instead of once checked for clippy and once built for the
# tests) and every workspace target is still linted with `-D warnings`: the lib, bin and test
# targets by the nextest build below, examples and benches by the two commands before it
# (`cargo test --no-run` builds benches with the dev-like test profile, not release).
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --examples --locked
cargo test --workspace --benches --no-run --locked

# Most tests wait on child processes and sockets rather than the CPU: two per core.
cargo nextest run --workspace --locked --no-fail-fast --test-threads "$(( $(nproc) * 2 ))"
