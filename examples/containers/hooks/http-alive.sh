#!/bin/sh
# llmux alive hook: the backend answers /health. A stopped container's
# name does not resolve on the compose network: curl fails, "down".
exec curl -fsS -o /dev/null --max-time 2 "${LLMUX_UPSTREAM:?}/health"
