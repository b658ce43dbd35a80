#!/usr/bin/env bash
# bench/throughput.sh: bench/throughput.py with Debian's python (the pyenv
# python3 first on PATH has no numpy and is not what the tests use).
# Arguments go to throughput.py; --help lists them.
exec /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/throughput.py" "$@"
