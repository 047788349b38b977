#!/bin/sh
# guide: c-native build
set -eu
cc -shared -fPIC -O2 -Wall -Werror -I include plugin.c -o plugin.so
