#!/bin/sh
# llmux sleep hook for vLLM sleep mode: level 1 moves the weights to CPU
# RAM and drops the KV cache; the container keeps running.
set -eu
: "${LLMUX_UPSTREAM:?}"
# Not answering at all (container stopped): nothing holds the GPU.
curl -fsS -o /dev/null --max-time 2 "$LLMUX_UPSTREAM/health" || exit 0
curl -fsS -X POST "$LLMUX_UPSTREAM/sleep?level=1"
curl -fsS --max-time 5 "$LLMUX_UPSTREAM/is_sleeping" | grep -Eq '"is_sleeping": *true'
