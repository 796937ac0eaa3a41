#!/usr/bin/env bash
# llmux wake hook for SGLang.
# - server not running: start it with --enable-memory-saver and
#   --enable-weights-cpu-backup (it comes up holding its memory), wait for
#   /health;
# - memory released by sleep.sh: POST /resume_memory_occupation.
# Per model, from the config line: SGLANG_MODEL (HF id or local path,
# required) and SGLANG_ARGS (extra launch_server flags, split on spaces).
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}" "${SGLANG_MODEL:?set SGLANG_MODEL in the wake hook line}"
base="http://127.0.0.1:$LLMUX_PORT"
state="${LLMUX_STATE_DIR:-/tmp/llmux-sglang}"
name="$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9._-' '_')"
pid_file="$state/$name.pid"
log_file="$state/$name.log"
released="$state/$name.released"
mkdir -p "$state"

# The HTTP front end answers (does not need the GPU memory).
server_up() { curl -fsS -o /dev/null --max-time 2 "$base/v1/models" 2>/dev/null; }

if ! server_up; then
    rm -f "$released"
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pid_file"
        # shellcheck disable=SC2206
        extra=(${SGLANG_ARGS:-})
        # shellcheck disable=SC2016
        setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
            python3 -m sglang.launch_server \
            --model-path "$SGLANG_MODEL" \
            --served-model-name "$LLMUX_MODEL" \
            --host 127.0.0.1 --port "$LLMUX_PORT" \
            --enable-memory-saver --enable-weights-cpu-backup \
            "${extra[@]}" \
            </dev/null >>"$log_file" 2>&1 &
        for _ in $(seq 50); do [ -s "$pid_file" ] && break; sleep 0.1; done
        pid="$(cat "$pid_file")"
    fi
    until server_up; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; exit 1; }
        sleep 1
    done
elif [ -e "$released" ]; then
    # Empty body: resume every released region (weights and KV cache).
    curl -fsS -X POST "$base/resume_memory_occupation" \
        -H 'content-type: application/json' -d '{}'
    rm -f "$released"
fi

# /health is 200 once the server can generate (it may run a 1-token check).
until curl -fsS -o /dev/null --max-time 30 "$base/health"; do
    sleep 1
done
