#!/bin/sh
# guide: rust-native build
set -eu
cargo build --release
cp "${CARGO_TARGET_DIR:-target}/release/libplugin.so" plugin.so
