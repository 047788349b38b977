#!/bin/sh
# guide: python-wasm build
set -eu
componentize-py -d wit -w backend componentize app -o plugin.wasm
