#!/bin/sh
# llmux alive hook for Ollama: the model's server lists it in /api/ps
# (loaded in memory). Needs jq.
ps="$(curl -fsS --max-time 2 "http://127.0.0.1:${LLMUX_PORT:?}/api/ps")" || exit 1
printf '%s' "$ps" | jq -e --arg m "${LLMUX_MODEL:?}" \
    'any(.models[]?; .name == $m or .model == $m or .name == ($m + ":latest"))' >/dev/null
