#!/bin/sh
# The plugin's test: one task with no server (`agentserver plugins run`), checking the event
# and the outcome. Run `sh build.sh` first.
set -eu
out=$(agentserver plugins run {{name}} --plugin-dir . --allow-native {{name}} --prompt "hello world")
printf '%s\n' "$out"
printf '%s\n' "$out" | grep -q '^event {.*"text":"You said: hello world"'
printf '%s\n' "$out" | grep -q '^outcome {"status":"completed","result":"You said: hello world"'
echo "test passed"
