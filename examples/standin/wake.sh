#!/usr/bin/env bash
# Wake hook for the stand-in backend: start `llmux-standin` for $LLMUX_MODEL
# on $LLMUX_PORT in the background, then wait until /health answers 200.
set -eu
state="${LLMUX_STATE_DIR:-${TMPDIR:-/tmp}/llmux-standin}"
mkdir -p "$state"
pidfile="$state/$LLMUX_PORT.pid"
healthy() { curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$LLMUX_PORT/health"; }

healthy 2>/dev/null && exit 0

bin="${LLMUX_STANDIN:-}"
if [ -z "$bin" ]; then
  here="$(cd "$(dirname "$0")/../.." && pwd)"
  for candidate in "$here/target/release/llmux-standin" "$here/target/debug/llmux-standin"; do
    if [ -x "$candidate" ]; then bin="$candidate"; break; fi
  done
fi
[ -n "$bin" ] || { echo "llmux-standin not found: run cargo build --release" >&2; exit 1; }

# Output to a file, so the server does not hold the hook's pipes.
nohup "$bin" --port "$LLMUX_PORT" --model "$LLMUX_MODEL" --load-ms "${STANDIN_LOAD_MS:-300}" \
  >"$state/$LLMUX_PORT.log" 2>&1 &
echo $! >"$pidfile"
echo "started llmux-standin for $LLMUX_MODEL (pid $!)"

for _ in $(seq 1 400); do
  healthy 2>/dev/null && exit 0
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "llmux-standin exited" >&2; exit 1; }
  sleep 0.05
done
echo "llmux-standin did not become healthy" >&2
exit 1
