#!/usr/bin/env bash
# llmux wake hook for Ollama: one `ollama serve` per model, on the model's own
# port (llmux needs distinct backend ports), all sharing one model store.
# Starts that server if nothing answers on the port, then loads the model
# with an empty-prompt /api/generate and keep_alive -1 (stay loaded).
# $LLMUX_MODEL must be the Ollama model name, e.g. "llama3.2:3b", already
# pulled into $OLLAMA_MODELS.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
base="http://127.0.0.1:$LLMUX_PORT"
state="${LLMUX_STATE_DIR:-/tmp/llmux-ollama}"
name="$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9._-' '_')"
mkdir -p "$state"

server_up() { curl -fsS -o /dev/null --max-time 2 "$base/api/version" 2>/dev/null; }

if ! server_up; then
    # OLLAMA_KEEP_ALIVE=-1: requests that carry no keep_alive (all of the
    # OpenAI-compatible /v1 ones) must not reset the model to the default
    # 5-minute unload timer; only sleep.sh unloads.
    OLLAMA_HOST="127.0.0.1:$LLMUX_PORT" OLLAMA_KEEP_ALIVE=-1 \
        setsid ollama serve </dev/null >>"$state/$name.log" 2>&1 &
    pid=$!
    until server_up; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$state/$name.log" >&2; exit 1; }
        sleep 0.2
    done
fi

# An empty prompt only loads the model. Ollama answers once it is loaded.
curl -fsS --max-time 600 "$base/api/generate" \
    -d "{\"model\": \"$LLMUX_MODEL\", \"keep_alive\": -1, \"stream\": false}" >/dev/null
"$(dirname "$0")/alive.sh"
