#!/bin/sh
# llmux alive hook: exit 0 iff llama-server's /health answers 200 within 2s
# (it answers 503 while the model is still loading).
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
    "http://127.0.0.1:${LLMUX_PORT:?LLMUX_PORT is not set}/health" 2>/dev/null)"
[ "$code" = 200 ]
