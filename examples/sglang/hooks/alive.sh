#!/bin/sh
# llmux alive hook for SGLang: memory not released by sleep.sh, and /health
# answers 200. (Never probe /health while released: it may try to generate.)
state="${LLMUX_STATE_DIR:-/tmp/llmux-sglang}"
name="$(printf '%s' "${LLMUX_MODEL:?}" | tr -c 'A-Za-z0-9._-' '_')"
[ ! -e "$state/$name.released" ] &&
    curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:${LLMUX_PORT:?}/health"
