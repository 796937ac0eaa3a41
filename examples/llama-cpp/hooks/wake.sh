#!/usr/bin/env bash
# llmux wake hook: start llama-server for $LLMUX_MODEL on $LLMUX_PORT and
# return once /health answers 200. A no-op when it is already healthy.
#
# Per model (set them in the model's `env` in llmux's config):
#   LLAMA_MODEL        the GGUF (also read as LLMUX_REAL_MODEL)
#   LLAMA_SERVER_ARGS  extra llama-server flags (e.g. "-c 8192 -ngl 99"),
#                      split on spaces, placed last so they override the
#                      defaults below (also read as LLMUX_LLAMA_ARGS)
#   LLAMA_THREADS      CPU threads (default: nproc)
#   LLAMA_SERVER       the llama-server binary
# A binary or model not given comes from the env file written by
# tests/real/install.sh in ${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}.
# The chat template is the GGUF's own (--jinja).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

if healthy; then
    say "already healthy on port $LLMUX_PORT"
    exit 0
fi

model="${LLAMA_MODEL:-${LLMUX_REAL_MODEL:-}}"
if [ -z "${LLAMA_SERVER:-}" ] || [ -z "$model" ]; then
    env_file="${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}/env"
    if [ ! -r "$env_file" ]; then
        say "LLAMA_SERVER/LLAMA_MODEL unset and no $env_file (run tests/real/install.sh)"
        exit 1
    fi
    given_server="${LLAMA_SERVER:-}"
    # shellcheck disable=SC1090
    . "$env_file"
    LLAMA_SERVER="${given_server:-$LLAMA_SERVER}"
    model="${model:-$LLMUX_REAL_MODEL}"
fi
[ -x "$LLAMA_SERVER" ] || { say "not executable: $LLAMA_SERVER"; exit 1; }
[ -r "$model" ] || { say "model not readable: $model"; exit 1; }
threads="${LLAMA_THREADS:-$(nproc 2>/dev/null || echo 4)}"

mkdir -p "$STATE_DIR"

if pid="$(server_pid)"; then
    # Started earlier (e.g. a wake that timed out while loading): wait for it.
    say "llama-server already running (pid $pid), waiting for it"
else
    # shellcheck disable=SC2206
    extra=(${LLAMA_SERVER_ARGS:-${LLMUX_LLAMA_ARGS:-}})
    rm -f "$PID_FILE"
    printf '\n==== %s wake: starting %s on port %s\n' "$(date '+%F %T')" "$LLMUX_MODEL" "$LLMUX_PORT" >>"$LOG_FILE"
    # setsid: the server leaves the hook's process group, so it outlives the
    # hook (and a wake timeout); only sleep.sh stops it. The inner sh writes
    # its own pid, then execs llama-server under that same pid.
    # shellcheck disable=SC2016
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        "$LLAMA_SERVER" -m "$model" \
        --host 127.0.0.1 --port "$LLMUX_PORT" \
        --alias "$LLMUX_MODEL" \
        -c 4096 -t "$threads" -np 1 \
        --jinja --no-webui \
        "${extra[@]}" \
        </dev/null >>"$LOG_FILE" 2>&1 &
    # Wait for the pid file (written before exec).
    for _ in $(seq 50); do
        [ -s "$PID_FILE" ] && break
        sleep 0.1
    done
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [ -n "$pid" ] || { say "llama-server did not start"; exit 1; }
    say "started llama-server pid $pid, log $LOG_FILE"
fi

# Poll until healthy; llmux's wake timeout bounds the wait.
while ! healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
        say "llama-server (pid $pid) exited before becoming healthy; last log lines:"
        tail -n 20 "$LOG_FILE" >&2 || true
        rm -f "$PID_FILE"
        exit 1
    fi
    sleep 0.1
done
say "healthy on port $LLMUX_PORT"
