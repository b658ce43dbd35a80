#!/usr/bin/env bash
# Runs a fuzz target once over each of its seeds and kept crash reproducers:
# no fuzzing, nothing written. Exits non-zero if any input fails.
#   tests/fuzz/replay.sh BUILD_DIR/bin/fuzz_frame
set -euo pipefail
bin="$1"
name="$(basename "$bin")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
inputs=()
for dir in "$here/corpus/$name" "$here/crashes/$name"; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*; do
    [ -f "$f" ] && inputs+=("$f")
  done
done
if [ "${#inputs[@]}" -eq 0 ]; then
  echo "$name: no seeds in $here/corpus/$name" >&2
  exit 1
fi
exec "$bin" "${inputs[@]}"
