#!/bin/sh
# guide: js-wasm build
set -eu
componentize-js plugin.js --wit wit --world-name backend --disable http fetch-event -o plugin.wasm
