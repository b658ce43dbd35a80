#!/usr/bin/env bash
# The main job: a local pool (kvpool-agent --standalone: an agent lending
# 1 GiB with the coordinator embedded), 2 prefill workers putting the KV
# blocks of synthetic prompts that share prefixes (Llama-3-8B blocks: 16
# tokens x 32 layers, 2 MiB), and 2 decode workers that wait for those
# blocks, get them and check every byte. Prints a summary; exits non-zero on
# any wrong byte or failed operation. Extra arguments go to kvpool-demo
# (e.g. --worker-tls default,tcp runs every other worker over TCP).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kvpool_install_deps
kvpool_build "$KVPOOL_ROOT/build"
echo
KVPOOL_LOG_LEVEL="${KVPOOL_LOG_LEVEL:-warn}" "$KVPOOL_ROOT/build/bin/kvpool-demo" "$@"
