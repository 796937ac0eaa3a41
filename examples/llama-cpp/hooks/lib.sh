# shellcheck shell=bash disable=SC2034
# Shared by wake.sh and sleep.sh (sourced, not run).
#
# State per model, under ${LLMUX_STATE_DIR:-/tmp/llmux-llama}:
#   <model>.pid   pid of the llama-server that wake.sh started
#   <model>.log   its stdout/stderr (appended across restarts)

: "${LLMUX_MODEL:?LLMUX_MODEL is not set (llmux sets it for every hook)}"
: "${LLMUX_PORT:?LLMUX_PORT is not set (llmux sets it for every hook)}"

STATE_DIR="${LLMUX_STATE_DIR:-/tmp/llmux-llama}"
# Model names may contain '/' or ':'; keep file names tame.
SAFE_NAME="$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9._-' '_')"
PID_FILE="$STATE_DIR/$SAFE_NAME.pid"
LOG_FILE="$STATE_DIR/$SAFE_NAME.log"
HEALTH_URL="http://127.0.0.1:$LLMUX_PORT/health"

say() { printf '%s[%s]: %s\n' "${0##*/}" "$LLMUX_MODEL" "$*" >&2; }

# True iff /health answers 200 (503 while the model loads).
healthy() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$HEALTH_URL" 2>/dev/null)" = 200 ]
}

# True iff something accepts TCP connections on the model's port.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$LLMUX_PORT") 2>/dev/null
}

# True iff $1 is a live llama-server serving $LLMUX_PORT (guards against a
# stale pid file whose pid was reused by some other process).
is_our_server() {
    local pid="$1" cmdline
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        return 1
    fi
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    case "$cmdline" in
        *llama-server*" --port $LLMUX_PORT "*) return 0 ;;
        *) return 1 ;;
    esac
}

# Prints the pid of this model's llama-server, if one runs: from the pid
# file, else (pid file lost) by looking for a llama-server on our port.
server_pid() {
    local pid proc
    if [ -r "$PID_FILE" ]; then
        pid="$(cat "$PID_FILE" 2>/dev/null || true)"
        if is_our_server "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        if is_our_server "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}
