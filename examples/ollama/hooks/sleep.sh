#!/usr/bin/env bash
# llmux sleep hook for Ollama: unload the model (keep_alive 0) and wait until
# /api/ps no longer lists it. The small `ollama serve` process stays up.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
base="http://127.0.0.1:$LLMUX_PORT"

# Server not running: nothing is loaded.
curl -fsS -o /dev/null --max-time 2 "$base/api/version" 2>/dev/null || exit 0

curl -fsS "$base/api/generate" \
    -d "{\"model\": \"$LLMUX_MODEL\", \"keep_alive\": 0, \"stream\": false}" >/dev/null
while "$(dirname "$0")/alive.sh"; do
    sleep 0.2
done
