#!/bin/sh
# llmux alive hook for vLLM sleep mode: up and not sleeping.
curl -fsS -o /dev/null --max-time 2 "${LLMUX_UPSTREAM:?}/health" &&
    curl -fsS --max-time 2 "$LLMUX_UPSTREAM/is_sleeping" | grep -Eq '"is_sleeping": *false'
