#!/usr/bin/env bash
# Smoke test of the real backend installed by tests/real/install.sh: start
# llama-server on a free loopback port with the flags llmux's examples use,
# wait for /health (503 while loading, then 200), run one deterministic chat
# completion, check GET /slots, stop the server. Exits non-zero on failure.
set -euo pipefail

CACHE="${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}"
if [ -z "${LLAMA_SERVER:-}" ] || [ -z "${LLMUX_REAL_MODEL:-}" ]; then
    [ -r "$CACHE/env" ] || { echo "no $CACHE/env: run tests/real/install.sh first" >&2; exit 1; }
    # shellcheck disable=SC1091
    . "$CACHE/env"
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp "${TMPDIR:-/tmp}/llmux-smoke.XXXXXX.log")"
base="http://127.0.0.1:$port"

"$LLAMA_SERVER" -m "$LLMUX_REAL_MODEL" --host 127.0.0.1 --port "$port" \
    -c 4096 -t "$(nproc)" -np 1 --alias gemma-a \
    --jinja --no-webui --no-cache-prompt \
    >"$log" 2>&1 &
pid=$!
stop() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap stop EXIT

start=$(date +%s.%N)
codes=""
while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/health" || true)"
    case " $codes " in *" $code "*) ;; *) codes="$codes $code" ;; esac
    [ "$code" = 200 ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "llama-server died; log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    sleep 0.1
done
ready=$(date +%s.%N)
echo "port $port: /health codes seen:$codes; ready after $(python3 -c "print(round($ready - $start, 2))")s"

reply="$(curl -fsS --max-time 60 "$base/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "gemma-a", "temperature": 0, "max_tokens": 8,
         "messages": [{"role": "user", "content": "Say hello."}]}')"
echo "chat: $reply"
python3 - "$reply" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
assert r["object"] == "chat.completion", r
assert r["model"] == "gemma-a", r["model"]
assert r["choices"][0]["message"]["content"].strip(), "empty completion"
assert r["usage"]["completion_tokens"] <= 8, r["usage"]
EOF

slots_code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base/slots")"
echo "GET /slots: $slots_code"
[ "$slots_code" = 200 ]

stop
trap - EXIT
echo "smoke: ok (log $log)"
