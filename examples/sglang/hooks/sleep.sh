#!/usr/bin/env bash
# llmux sleep hook for SGLang: release the GPU memory (weights and KV cache)
# while the server process stays up. SGLang requires the engine to be idle
# for this (it asserts there are no running requests), which is why
# config.yaml keeps drain_before_switch: true.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
base="http://127.0.0.1:$LLMUX_PORT"
state="${LLMUX_STATE_DIR:-/tmp/llmux-sglang}"
name="$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9._-' '_')"
released="$state/$name.released"
mkdir -p "$state"

# Server not running: it holds no GPU memory.
curl -fsS -o /dev/null --max-time 2 "$base/v1/models" 2>/dev/null || exit 0
# Already released (SGLang has no endpoint to ask, so we keep a marker).
[ -e "$released" ] && exit 0

# Empty body: release every region (weights and KV cache).
curl -fsS -X POST "$base/release_memory_occupation" \
    -H 'content-type: application/json' -d '{}'
touch "$released"
