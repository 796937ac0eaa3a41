#!/usr/bin/env bash
# llmux sleep hook for vLLM sleep mode: level 1 offloads the weights to CPU
# RAM and drops the KV cache; the process stays up. Note that /sleep aborts
# requests still running (its default mode), which is why config.yaml keeps
# drain_before_switch: true.
set -euo pipefail
: "${LLMUX_PORT:?}"
base="http://127.0.0.1:$LLMUX_PORT"

# Not running at all: nothing holds the GPU.
curl -s -o /dev/null --max-time 2 "$base/health" || exit 0

curl -fsS -X POST "$base/sleep?level=${VLLM_SLEEP_LEVEL:-1}"
curl -fsS --max-time 5 "$base/is_sleeping" | grep -Eq '"is_sleeping": *true'
