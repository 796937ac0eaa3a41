#!/usr/bin/env bash
# llmux alive hook: container running and llama-server's /health is 200.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

[ "$(podman container inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null)" = running ]
curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$LLMUX_PORT/health"
