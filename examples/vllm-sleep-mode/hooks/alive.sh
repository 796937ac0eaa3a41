#!/bin/sh
# llmux alive hook for vLLM: up and not sleeping.
base="http://127.0.0.1:${LLMUX_PORT:?}"
curl -fsS -o /dev/null --max-time 2 "$base/health" &&
    curl -fsS --max-time 2 "$base/is_sleeping" | grep -Eq '"is_sleeping": *false'
