#!/usr/bin/env bash
# llmux sleep hook: stop this model's llama-server (SIGTERM, then SIGKILL
# after ${LLMUX_SLEEP_GRACE_SECS:-5}s) and return once the process is gone
# and its port refuses connections. Exit 0 if it was not running.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

grace="${LLMUX_SLEEP_GRACE_SECS:-5}"

if pid="$(server_pid)"; then
    say "stopping llama-server pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    # Poll every 0.1s: grace seconds of SIGTERM, then SIGKILL.
    ticks=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$ticks" -eq $((grace * 10)) ]; then
            say "still running after ${grace}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        ticks=$((ticks + 1))
        sleep 0.1
    done
else
    say "not running"
fi
rm -f "$PID_FILE"

# The process is gone; make sure nothing (e.g. a child that inherited the
# socket) still accepts on the port, so the next wake can bind it.
for _ in $(seq 100); do
    if ! port_open; then
        say "port $LLMUX_PORT is free"
        exit 0
    fi
    sleep 0.1
done
say "port $LLMUX_PORT still accepts connections, but not from our llama-server"
exit 1
