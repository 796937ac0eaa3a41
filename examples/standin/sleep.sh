#!/usr/bin/env bash
# Sleep hook for the stand-in backend: stop it and wait until it is gone.
set -eu
state="${LLMUX_STATE_DIR:-${TMPDIR:-/tmp}/llmux-standin}"
pidfile="$state/$LLMUX_PORT.pid"
[ -f "$pidfile" ] || exit 0
pid="$(cat "$pidfile")"
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }
  sleep 0.05
done
kill -KILL "$pid" 2>/dev/null || true
rm -f "$pidfile"
