#!/usr/bin/env bash
# CPU microseconds per request of one llmux binary, for A/B comparisons of
# two builds: llmux pinned to CPU 1, the stand-in backend and oha on CPU 0,
# utime+stime from /proc/PID/stat over N requests. Loopback only; stops
# everything it starts.
#
#   benches/cpu_per_request.sh BODY.json [N] [LLMUX_BINARY]
#
# oha is the one benches/compare.sh installs (or set OHA). HEADER adds one
# request header, e.g. HEADER='x-standin-chunks: 20' for a 20-chunk stream.
# CONFIG adds top-level config lines, e.g. CONFIG='access_log: false'.
set -euo pipefail
body=$1
n=${2:-20000}
llmux=${3:-./target/release/llmux}
oha=${OHA:-$HOME/.cache/llmux-bench/cargo/bin/oha}
extra=()
[[ -n ${HEADER:-} ]] && extra=(-H "$HEADER")
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

first_line() {
    for _ in $(seq 100); do
        [[ -s $1 ]] && { head -n1 "$1"; return; }
        sleep 0.05
    done
    echo "no output in $1" >&2
    exit 1
}

taskset -c 0 ./target/release/llmux-standin --port 0 --model m >"$tmp/standin.out" 2>/dev/null &
pids+=($!)
port=$(first_line "$tmp/standin.out" | awk -F: '{print $NF}')
printf 'host: 127.0.0.1\nport: 0\nmax_body_bytes: 104857600\n%s\nmodels:\n  m: {port: %s, wake: "true", sleep: "true", alive: "true"}\n' \
    "${CONFIG:-}" "$port" >"$tmp/llmux.yaml"
taskset -c 1 "$llmux" -c "$tmp/llmux.yaml" >"$tmp/llmux.out" 2>/dev/null &
pid=$!
pids+=("$pid")
addr=$(first_line "$tmp/llmux.out" | awk '{print $3}')
url=http://$addr/v1/chat/completions
# Warm up until the model is adopted and connections are pooled.
taskset -c 0 "$oha" -n 2000 -c 16 --no-tui -m POST -D "$body" -T application/json "${extra[@]}" "$url" >/dev/null 2>&1
ticks=$(getconf CLK_TCK)
before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
taskset -c 0 "$oha" -n "$n" -c 16 --no-tui -m POST -D "$body" -T application/json "${extra[@]}" "$url" >/dev/null 2>&1
after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
python3 -c "print(f'{($after - $before) / $ticks / $n * 1e6:.2f} µs/req')"
