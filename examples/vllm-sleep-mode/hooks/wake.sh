#!/usr/bin/env bash
# llmux wake hook for vLLM sleep mode.
# - server not running: start it (it comes up awake) and wait for /health;
# - server asleep: POST /wake_up;
# then require GET /is_sleeping to say false.
# Per model, from the config line: VLLM_MODEL (HF id or local path, required)
# and VLLM_ARGS (extra `vllm serve` flags, split on spaces).
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}" "${VLLM_MODEL:?set VLLM_MODEL in the wake hook line}"
base="http://127.0.0.1:$LLMUX_PORT"
state="${LLMUX_STATE_DIR:-/tmp/llmux-vllm}"
name="$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9._-' '_')"
pid_file="$state/$name.pid"
log_file="$state/$name.log"
mkdir -p "$state"

up() { curl -fsS -o /dev/null --max-time 2 "$base/health" 2>/dev/null; }
sleep_state() { curl -fsS --max-time 5 "$base/is_sleeping"; }

if ! up; then
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pid_file"
        # shellcheck disable=SC2206
        extra=(${VLLM_ARGS:-})
        # VLLM_SERVER_DEV_MODE=1 exposes /sleep, /wake_up and /is_sleeping.
        # They are unauthenticated: keep the server on 127.0.0.1.
        # setsid: the server outlives this hook and its process group.
        # shellcheck disable=SC2016
        VLLM_SERVER_DEV_MODE=1 setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
            vllm serve "$VLLM_MODEL" \
            --served-model-name "$LLMUX_MODEL" \
            --host 127.0.0.1 --port "$LLMUX_PORT" \
            --enable-sleep-mode \
            "${extra[@]}" \
            </dev/null >>"$log_file" 2>&1 &
        for _ in $(seq 50); do [ -s "$pid_file" ] && break; sleep 0.1; done
        pid="$(cat "$pid_file")"
    fi
    # The first start loads weights and captures CUDA graphs: minutes,
    # bounded by the model's wake_timeout_secs in config.yaml.
    until up; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; exit 1; }
        sleep 1
    done
fi

if ! now="$(sleep_state)"; then
    echo "no /is_sleeping: is vLLM running with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode?" >&2
    exit 1
fi
case "$now" in
    *true*) curl -fsS -X POST "$base/wake_up" ;;
esac
sleep_state | grep -Eq '"is_sleeping": *false'
