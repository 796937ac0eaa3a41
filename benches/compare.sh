#!/usr/bin/env bash
# benches/compare.sh: side-by-side performance comparison of llmux against
# nginx as a plain reverse proxy and against no proxy at all ("direct"),
# in front of a backend that answers instantly. See docs/performance.md.
#
#   bash benches/compare.sh            # full run (about 12 minutes on 2 CPUs)
#   QUICK=1 bash benches/compare.sh    # smoke test: 1 KB model-last only, short runs
#
# It installs what it lacks (nginx-light and wrk from Debian, oha from
# crates.io into ~/.cache/llmux-bench/cargo), builds llmux in release mode,
# sends traffic to 127.0.0.1 only, stops every process it starts and
# removes its temp dir. The Markdown report goes to stdout and to
# benches/results/latest.md; progress goes to stderr.
#
# Environment (defaults in brackets):
#   QUICK=1        only the 1 KB model-last case, short durations
#   CASES          space-separated subset of: 1k-last 1k-first 64k-last
#                  64k-first 1m-last 1m-first sse  [all; QUICK: 1k-last]
#   DURATION       wrk duration per peer and body for req/s  [10s; QUICK: 2s]
#   N              requests per CPU measurement (oha -n)      [40000; QUICK: 5000]
#   N_1M           the same for the 1 MB bodies                [2000; QUICK: 200]
#   CONNS          connections for wrk and oha                 [16]
#   RATE           fixed rate for p50/p99 (oha -q)             [1000]
#   RATE_1M        the same for the 1 MB bodies                [100]
#   LAT_DURATION   duration of each latency run (oha -z)       [10s; QUICK: 2s]
#   RUNS           interleaved llmux/nginx latency runs for
#                  the 1 KB bodies; the median is reported     [5; QUICK: 3]
#   CPU_RUNS       interleaved llmux/nginx CPU runs per body; the
#                  median is reported                          [4; QUICK: 2]
#   IDLE_CONNS     idle keep-alive connections for the memory figure [1000]
#   UPLOADS        concurrent 1 MB uploads for the memory figure  [100]
#   RESULTS        report file   [benches/results/latest.md; QUICK: .../quick.md]
#   OHA            path of an oha binary to use instead of finding/installing one
#   LLMUX_BENCH_CACHE  cache dir for the oha install           [~/.cache/llmux-bench]
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    : "${CASES:=1k-last}" "${DURATION:=2s}" "${N:=5000}" "${N_1M:=200}" "${LAT_DURATION:=2s}" "${RUNS:=3}" "${CPU_RUNS:=2}"
    : "${RESULTS:=$ROOT/benches/results/quick.md}"
fi
CASES=${CASES:-1k-last 1k-first 64k-last 64k-first 1m-last 1m-first sse}
DURATION=${DURATION:-10s}
N=${N:-40000}
N_1M=${N_1M:-2000}
CONNS=${CONNS:-16}
RATE=${RATE:-1000}
RATE_1M=${RATE_1M:-100}
LAT_DURATION=${LAT_DURATION:-10s}
RUNS=${RUNS:-5}
CPU_RUNS=${CPU_RUNS:-4}
IDLE_CONNS=${IDLE_CONNS:-1000}
UPLOADS=${UPLOADS:-100}
RESULTS=${RESULTS:-$ROOT/benches/results/latest.md}
CACHE=${LLMUX_BENCH_CACHE:-$HOME/.cache/llmux-bench}
MODEL=bench

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in N N_1M CONNS RATE RATE_1M RUNS IDLE_CONNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for c in $CASES; do
    case $c in 1k-last | 1k-first | 64k-last | 64k-first | 1m-last | 1m-first | sse) ;;
    *) die "unknown case '$c' in CASES" ;;
    esac
done
(($(nproc) >= 2)) || die "needs at least 2 CPUs (load generator and backend on CPU 0, proxy on CPU 1)"

# ---------------------------------------------------------------- installs
SUDO=
[[ $(id -u) == 0 ]] || SUDO=sudo
apt_missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx-light)
command -v wrk >/dev/null || apt_missing+=(wrk)
command -v python3 >/dev/null || apt_missing+=(python3)
command -v taskset >/dev/null || apt_missing+=(util-linux)
if ((${#apt_missing[@]})); then
    log "installing from Debian: ${apt_missing[*]}"
    t0=$SECONDS
    $SUDO apt-get update >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${apt_missing[@]}" >&2
    log "apt-get install took $((SECONDS - t0)) s"
    # Debian's package starts a system nginx on port 80 where systemd runs;
    # this script only wants the binary.
    if [[ " ${apt_missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null &&
        systemctl is-active --quiet nginx 2>/dev/null; then
        log "stopping and disabling the system nginx service the package started"
        $SUDO systemctl disable --now nginx >&2 || true
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WRK=$(command -v wrk)

if [[ -z ${OHA:-} ]]; then
    if [[ -x $CACHE/cargo/bin/oha ]]; then
        OHA=$CACHE/cargo/bin/oha
    elif command -v oha >/dev/null; then
        OHA=$(command -v oha)
    else
        log "installing oha from crates.io into $CACHE/cargo (a few minutes, once)"
        t0=$SECONDS
        cargo install oha --locked --root "$CACHE/cargo" >&2
        log "cargo install oha took $((SECONDS - t0)) s"
        OHA=$CACHE/cargo/bin/oha
    fi
fi
[[ -x $OHA ]] || die "oha not found at $OHA"
oha_help=$("$OHA" --help)
for flag in --latency-correction --no-tui --output-format -D -T -q -z -n -c; do
    grep -q -- " $flag" <<<"$oha_help" || die "$OHA lacks the $flag flag (oha too old?)"
done
OHA_THREADS=()
grep -q -- --worker-threads <<<"$oha_help" && OHA_THREADS=(--worker-threads 1)

log "building llmux (cargo build --release)"
cargo build --release --bin llmux --bin llmux-standin >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LLMUX=$TARGET/release/llmux
STANDIN=$TARGET/release/llmux-standin
[[ -x $LLMUX && -x $STANDIN ]] || die "release binaries not found under $TARGET/release"

# ------------------------------------------------- processes and clean-up
TMP=$(mktemp -d "${TMPDIR:-/tmp}/llmux-bench.XXXXXX")
PIDS=()

# True while pid is running (a zombie child that is not reaped yet is not).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Stops one process this script started: SIGTERM, up to 10 s, SIGKILL, reap.
stop_pid() {
    local pid=$1 i keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in "${PIDS[@]}"; do [[ $i == "$pid" ]] || keep+=("$i"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1,000 idle connections and a 16-connection load need more than 1024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 100; i++)); do
        running "$pid" || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# The (first) child of a process: the nginx worker of a master.
child_of() {
    local d stat
    for d in /proc/[0-9]*; do
        stat=$(cat "$d/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        if [[ $ppid == "$1" ]]; then
            echo "${d#/proc/}"
            return 0
        fi
    done
    return 1
}

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat f
    stat=$(cat "/proc/$1/stat")
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    # f[0] is field 3 (state): utime is field 14, stime field 15.
    echo $((f[11] + f[12]))
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

CLK_TCK=$(getconf CLK_TCK)

# ----------------------------------------------------------------- bodies
log "generating request bodies in $TMP/bodies"
mkdir -p "$TMP/bodies"
python3 - "$TMP/bodies" "$MODEL" <<'PY'
import json, random, sys

out, model = sys.argv[1], sys.argv[2]
rnd = random.Random(1234)
snippets = [
    "Can you review this function?\n\n```python\ndef quote(s):\n    return '\"' + s.replace('\\\\', '\\\\\\\\') + '\"'\n```\n",
    "Le caf\u00e9 est tr\u00e8s bon; \u00e7a co\u00fbte 3 \u20ac. R\u00e9sum\u00e9 d\u00e9taill\u00e9, s'il vous pla\u00eet.",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3082\u542b\u3081\u307e\u3059\u3002\u7d75\u6587\u5b57\u3082 \U0001f389\U0001f680\U0001f44d \u2014 \u4e2d\u6587\u4e5f\u53ef\u4ee5\u3002",
    "She said \"hello\" and left.\tTabs\tand\r\nCRLF line ends, too.",
    "Path: C:\\Users\\bench\\Documents\\notes.txt and a regex \\d+\\.\\d*",
    "The config says {\"model\": \"not-this-one\", \"stream\": false}; ignore it.",
    "Summarise the following in three bullet points, keeping numbers exact: 3.14159, 2.71828, 1.41421.",
    "Emoji soup: \U0001f600\U0001f603\U0001f604\U0001f601 \U0001f9d1\u200d\U0001f4bb \U0001f1ef\U0001f1f5",
]
roles = ["assistant", "user"]


def encode(obj):
    # Raw UTF-8 for CJK and emoji, but \u00e9 as an escape, as some clients send.
    return json.dumps(obj, ensure_ascii=False).replace("\u00e9", "\\u00e9").encode()


def message(i):
    role = "system" if i == 0 else roles[i % 2]
    words = " ".join(rnd.choice(snippets) for _ in range(rnd.randint(1, 4)))
    return {"role": role, "content": words}


def body(size, model_first, stream):
    head = {"model": model} if model_first else {}
    tail = {
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 256,
        "stream": stream,
        "user": "bench-user-\u00e9\u65e5",
        "metadata": {"model": "nested-decoy", "note": "a nested \"model\" is not the model"},
    }
    if not model_first:
        tail["model"] = model

    def build(msgs):
        return {**head, "messages": msgs, **tail}

    msgs, total = [], len(encode(build([])))
    # Grow by whole messages (sizes added up, not re-encoded), leaving room
    # for the last message, whose filler makes the size exact.
    while True:
        m = message(len(msgs))
        add = len(encode(m)) + (2 if msgs else 0)
        if total + add > size - 120:
            break
        msgs.append(m)
        total += add
    msgs.append({"role": "user", "content": "Thanks! "})
    base = len(encode(build(msgs)))
    assert base <= size, (size, base)
    msgs[-1]["content"] += "x" * (size - base)
    data = encode(build(msgs))
    assert len(data) == size, (size, len(data))
    parsed = json.loads(data)
    assert parsed["model"] == model
    assert (next(iter(parsed)) == "model") == model_first
    assert (list(parsed)[-1] == "model") == (not model_first)
    return data


for name, size in (("1k", 1024), ("64k", 64 * 1024), ("1m", 1024 * 1024)):
    for pos in ("first", "last"):
        with open(f"{out}/{name}-{pos}.json", "wb") as f:
            f.write(body(size, pos == "first", False))
with open(f"{out}/sse.json", "wb") as f:
    f.write(body(1024, False, True))
PY

# ------------------------------------------------------------- servers
BACKEND_JSON='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench backend."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}'

# nginx_conf DIR PORT KIND [UPSTREAM_PORT]: KIND is backend or proxy.
nginx_conf() {
    local dir=$1 port=$2 kind=$3 up=${4:-} d
    mkdir -p "$dir"
    {
        [[ $(id -u) == 0 ]] && echo "user root;"
        echo "worker_processes 1;"
        echo "worker_rlimit_nofile 65536;"
        echo "pid $dir/nginx.pid;"
        echo "error_log $dir/error.log warn;"
        echo "events { worker_connections 8192; }"
        echo "http {"
        echo "    access_log off;"
        for d in client_body proxy fastcgi uwsgi scgi; do echo "    ${d}_temp_path $dir/$d;"; done
        echo "    keepalive_timeout 75s;"
        echo "    keepalive_requests 1000000;"
        echo "    client_max_body_size 100m;"
        if [[ $kind == backend ]]; then
            echo "    server {"
            echo "        listen 127.0.0.1:$port;"
            echo "        location / {"
            echo "            default_type application/json;"
            echo "            return 200 '$BACKEND_JSON';"
            echo "        }"
            echo "    }"
        else
            echo "    upstream backend {"
            echo "        server 127.0.0.1:$up;"
            echo "        keepalive 64;"
            echo "        keepalive_requests 1000000;"
            echo "    }"
            echo "    server {"
            echo "        listen 127.0.0.1:$port;"
            echo "        client_body_buffer_size 2m;"
            echo "        location / {"
            echo "            proxy_pass http://backend;"
            echo "            proxy_http_version 1.1;"
            echo "            proxy_set_header Connection \"\";"
            echo "            proxy_buffering off;"
            echo "            proxy_request_buffering on;"
            echo "        }"
            echo "    }"
        fi
        echo "}"
    } >"$dir/nginx.conf"
}

# start_nginx NAME CPU KIND [UPSTREAM_PORT]; sets NGX_PID NGX_WORKER NGX_PORT.
start_nginx() {
    local name=$1 cpu=$2 kind=$3 up=${4:-} dir=$TMP/$1
    NGX_PORT=$(free_port)
    nginx_conf "$dir" "$NGX_PORT" "$kind" "$up"
    taskset -c "$cpu" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
        >"$dir/stdout" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    wait_port "$NGX_PORT" "$NGX_PID" || { cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null; die "nginx $name did not start"; }
    NGX_WORKER=$(child_of "$NGX_PID") || die "no worker under nginx $name (pid $NGX_PID)"
}

# start_standin; sets SSE_PID SSE_PORT (backend of the SSE case, CPU 0).
start_standin() {
    local out=$TMP/standin.out
    taskset -c 0 "$STANDIN" --port 0 --model "$MODEL" >"$out" 2>"$TMP/standin.err" &
    SSE_PID=$!
    PIDS+=("$SSE_PID")
    SSE_PORT=$(listening_port "$out" "$SSE_PID")
    [[ -n $SSE_PORT ]] || { cat "$TMP/standin.err" >&2; die "llmux-standin did not start"; }
}

# listening_port FILE PID: the port of the `listening on ADDR` line that
# llmux and llmux-standin print first, waiting up to 10 s while PID runs;
# empty if it never comes.
listening_port() {
    local line i
    for ((i = 0; i < 100; i++)); do
        line=$(head -n1 "$1" 2>/dev/null)
        if [[ $line == "listening on "* ]]; then
            echo "${line##*:}"
            return
        fi
        running "$2" || return 0
        sleep 0.1
    done
}

# start_llmux NAME BACKEND_PORT; sets LMX_PID LMX_PORT (proxy under test, CPU 1).
start_llmux() { # NAME BACKEND_PORT [GATE]: with GATE, the model is asleep until the file GATE exists
    local dir=$TMP/$1 up=$2 gate=${3:-} i wake="'true'" alive="'true'"
    if [[ -n $gate ]]; then
        [[ $gate != *[\'\"]* ]] || die "the gate path must not contain quotes: $gate"
        wake="'while [ ! -e \"$gate\" ]; do sleep 0.02; done'" alive="'test -e \"$gate\"'"
    fi
    mkdir -p "$dir"
    cat >"$dir/llmux.yaml" <<EOF
models:
  $MODEL:
    port: $up
    wake: $wake
    sleep: 'true'
    alive: $alive
host: 127.0.0.1
port: 0
max_body_bytes: 134217728
shutdown_grace_secs: 2
EOF
    RUST_LOG=info taskset -c 1 "$LLMUX" -c "$dir/llmux.yaml" >"$dir/stdout" 2>"$dir/stderr" &
    LMX_PID=$!
    PIDS+=("$LMX_PID")
    LMX_PORT=$(listening_port "$dir/stdout" "$LMX_PID")
    [[ -n $LMX_PORT ]] || { cat "$dir/stderr" >&2; die "llmux did not start"; }
    [[ -z $gate ]] || return 0
    # Ready once the model is adopted as active (alive: 'true').
    for ((i = 0; i < 100; i++)); do
        if python3 - "$LMX_PORT" "$MODEL" <<'PY' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2))
sys.exit(0 if h.get("active") == sys.argv[2] else 1)
PY
        sleep 0.1
    done
    cat "$dir/stderr" >&2
    die "llmux never made $MODEL active"
}

# check_peer NAME URL BODY SSE: one request must succeed with the expected answer.
check_peer() {
    python3 - "$@" <<'PY' || die "peer $1 ($2) does not answer correctly"
import sys, urllib.request
name, url, body, sse = sys.argv[1:]
headers = {"Content-Type": "application/json"}
if sse == "1":
    headers["x-standin-chunks"] = "20"
req = urllib.request.Request(url, data=open(body, "rb").read(), headers=headers, method="POST")
with urllib.request.urlopen(req, timeout=10) as r:
    data = r.read()
    assert r.status == 200, r.status
if sse == "1":
    events = [l for l in data.split(b"\n") if l.startswith(b"data: ")]
    assert len(events) == 21 and events[-1] == b"data: [DONE]", (len(events), data[-200:])
else:
    assert b'"chat.completion"' in data, data[:200]
PY
}

# ------------------------------------------------------------- measuring
# wrk_lua BODY SSE -> path of a Lua script that POSTs BODY.
wrk_lua() {
    local lua=$1.lua
    {
        echo 'wrk.method = "POST"'
        echo "wrk.body = io.open([[$1]], \"rb\"):read(\"*a\")"
        echo 'wrk.headers["Content-Type"] = "application/json"'
        [[ $2 == 1 ]] && echo 'wrk.headers["x-standin-chunks"] = "20"'
    } >"$lua"
    echo "$lua"
}

# rps URL LUA -> requests/s at saturation (wrk).
rps() {
    local out
    out=$(taskset -c 0 "$WRK" -t1 -c"$CONNS" -d"$DURATION" --timeout 10s -s "$2" "$1")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "$out" >&2
        die "wrk got non-2xx answers from $1"
    fi
    if grep -q "Socket errors" <<<"$out"; then
        log "wrk: $(grep "Socket errors" <<<"$out" | sed 's/^ *//') ($1)"
    fi
    awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out"
}

# oha_check JSON N_EXPECTED (0: any count; deadline aborts allowed) -> exit status.
oha_check() {
    python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
codes = d.get("statusCodeDistribution", {})
errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
bad = {k: v for k, v in codes.items() if k != "200"}
ok = not bad and not errors and (want == 0 or codes.get("200", 0) == want) and codes.get("200", 0) > 0
if not ok:
    print(f"oha: status codes {codes}, errors {d.get('errorDistribution')}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

oha_args() { # BODY SSE
    OHA_ARGS=(--no-tui --output-format json -c "$CONNS" "${OHA_THREADS[@]}" -m POST -T application/json -D "$1")
    [[ $2 == 1 ]] && OHA_ARGS+=(-H "x-standin-chunks: 20")
    return 0
}

# cpu_us URL BODY SSE PID N -> CPU µs per request of PID over N requests.
cpu_us() {
    local t0 t1 json=$TMP/oha-cpu.json
    oha_args "$2" "$3"
    t0=$(cpu_ticks "$4")
    taskset -c 0 "$OHA" -n "$5" "${OHA_ARGS[@]}" "$1" >"$json"
    t1=$(cpu_ticks "$4")
    oha_check "$json" "$5" || die "CPU run against $1 had failures"
    awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$5" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }'
}

# latency URL BODY SSE RATE -> "p50_ms p99_ms" at a fixed rate.
latency() {
    local json=$TMP/oha-lat.json
    oha_args "$2" "$3"
    taskset -c 0 "$OHA" -q "$4" -z "$LAT_DURATION" --latency-correction "${OHA_ARGS[@]}" "$1" >"$json"
    oha_check "$json" 0 || die "latency run against $1 had failures"
    python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))["latencyPercentiles"]; print("%.3f %.3f" % (p["p50"] * 1e3, p["p99"] * 1e3))' "$json"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
pieces_label() { if [[ $1 == 0 ]]; then echo "each in one write"; else echo "in $1-byte pieces"; fi; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { awk -v v="$1" -v max="$2" -v strict="${3:-0}" 'BEGIN { if (v == "n/a") print "n/a"; else if (strict ? v < max : v <= max) print "ok"; else print "**over**" }'; }

declare -A RPS CPU P50 P99 RSS LABEL
declare -A P99RUNS CPURUNS

# ---------------------------------------------------------------- memory
# Fresh llmux (and, for reference, a fresh nginx proxy) before any load:
# idle RSS, then RSS with IDLE_CONNS idle keep-alive connections.
idle_conns() { # PORT PID -> VmRSS in KiB with the connections open
    python3 - "$1" "$2" "$IDLE_CONNS" <<'PY'
import resource, socket, sys, time
port, pid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64 if hard == resource.RLIM_INFINITY else min(n + 64, hard), hard))
req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(req)
    socks.append(s)
for s in socks:
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
time.sleep(1)
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmRSS:"):
        print(line.split()[1])
for s in socks:
    s.close()
PY
}

# UPLOADS concurrent uploads of the 1 MB body, all held by llmux at once:
# the model sleeps behind a gate, so every request waits in its queue with
# its body read. Each body goes in one write, or in PIECE-byte pieces sent
# round-robin over the connections (so llmux reads it in small chunks). Prints "KiB-of-bodies VmRSS-while-queued VmHWM" in KiB.
uploads() { # PORT PID BODY GATE PIECE (0: each body in one write)
    python3 - "$1" "$2" "$UPLOADS" "$3" "$4" "$5" <<'PY'
import socket, sys, time, urllib.request
port, pid, n, path, gate, piece = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
body = open(path, "rb").read()
head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode()
def kib(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
def queued():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(l.split()[1]) for l in text.splitlines() if l.startswith("llmux_queued_requests ")), -1)
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(head if piece else head + body)
    socks.append(s)
# In pieces: round-robin over the connections, PIECE bytes at a time.
for off in range(0, len(body) if piece else 0, piece or 1):
    for s in socks:
        s.sendall(body[off:off + piece])
deadline = time.time() + 60
while queued() < n:
    assert time.time() < deadline, "the uploads never all queued"
    time.sleep(0.02)
rss = kib("VmRSS")
open(gate, "w").close()
for s in socks:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    s.close()
print(n * len(body) // 1024, rss, kib("VmHWM"))
PY
}

log "starting the backend (nginx, CPU 0)"
start_nginx backend 0 backend
BACKEND_WORKER=$NGX_WORKER BACKEND_PORT=$NGX_PORT
check_peer backend "http://127.0.0.1:$BACKEND_PORT/v1/chat/completions" "$TMP/bodies/1k-last.json" 0

log "memory: idle RSS and $IDLE_CONNS idle keep-alive connections"
start_llmux mem-llmux "$BACKEND_PORT"
sleep 1
MEM_LLMUX_IDLE=$(status_kib "$LMX_PID" VmRSS)
MEM_LLMUX_CONNS=$(idle_conns "$LMX_PORT" "$LMX_PID")
stop_pid "$LMX_PID"
start_nginx mem-nginx 1 proxy "$BACKEND_PORT"
sleep 1
MEM_NGINX_IDLE=$(status_kib "$NGX_WORKER" VmRSS)
MEM_NGINX_MASTER=$(status_kib "$NGX_PID" VmRSS)
MEM_NGINX_CONNS=$(idle_conns "$NGX_PORT" "$NGX_WORKER")
stop_pid "$NGX_PID"
declare -A MEM_UP_BODIES MEM_UP_QUEUED MEM_UP_PEAK
for piece in 0 16000; do
    log "memory: $UPLOADS concurrent 1 MB uploads held in llmux's queue (pieces: $piece)"
    start_llmux "mem-uploads-$piece" "$BACKEND_PORT" "$TMP/mem-uploads-$piece.gate"
    read -r MEM_UP_BODIES[$piece] MEM_UP_QUEUED[$piece] MEM_UP_PEAK[$piece] < <(uploads "$LMX_PORT" "$LMX_PID" "$TMP/bodies/1m-last.json" "$TMP/mem-uploads-$piece.gate" "$piece")
    [[ -n ${MEM_UP_PEAK[$piece]} ]] || die "the uploads measurement failed"
    stop_pid "$LMX_PID"
done

# ----------------------------------------------------------------- cases
SSE_PID=
run_case() {
    local id=$1 body=$TMP/bodies/$1.json sse=0 bport=$BACKEND_PORT bpid=$BACKEND_WORKER n=$N rate=$RATE runs=1
    local path=/v1/chat/completions peer lua i r
    case $id in
    1k-*) runs=$RUNS ;;
    1m-*) n=$N_1M rate=$RATE_1M ;;
    sse)
        sse=1
        if [[ -z $SSE_PID ]]; then
            log "starting the SSE backend (llmux-standin, CPU 0)"
            start_standin
        fi
        bport=$SSE_PORT bpid=$SSE_PID
        ;;
    esac
    log "case $id: starting nginx and llmux (CPU 1) in front of 127.0.0.1:$bport"
    start_nginx "nginx-$id" 1 proxy "$bport"
    local npid=$NGX_PID nworker=$NGX_WORKER nport=$NGX_PORT
    start_llmux "llmux-$id" "$bport"
    local lpid=$LMX_PID lport=$LMX_PORT
    declare -A urls=([direct]="http://127.0.0.1:$bport$path" [nginx]="http://127.0.0.1:$nport$path" [llmux]="http://127.0.0.1:$lport$path")
    declare -A pids=([direct]=$bpid [nginx]=$nworker [llmux]=$lpid)
    lua=$(wrk_lua "$body" "$sse")
    for peer in direct nginx llmux; do
        check_peer "$peer" "${urls[$peer]}" "$body" "$sse"
    done
    for peer in direct nginx llmux; do
        log "case $id, $peer: wrk -c$CONNS -d$DURATION"
        RPS[$id,$peer]=$(rps "${urls[$peer]}" "$lua")
    done
    log "case $id, direct: CPU over $n requests"
    CPU[$id,direct]=$(cpu_us "${urls[direct]}" "$body" "$sse" "${pids[direct]}" "$n")
    local lcpu=() ncpu=()
    for ((i = 1; i <= CPU_RUNS; i++)); do
        for peer in nginx llmux; do
            log "case $id, $peer: CPU over $n requests (run $i of $CPU_RUNS)"
            r=$(cpu_us "${urls[$peer]}" "$body" "$sse" "${pids[$peer]}" "$n")
            if [[ $peer == llmux ]]; then lcpu+=("$r"); else ncpu+=("$r"); fi
        done
    done
    CPU[$id,llmux]=$(printf %.1f "$(median "${lcpu[@]}")") CPU[$id,nginx]=$(printf %.1f "$(median "${ncpu[@]}")")
    CPURUNS[$id,llmux]=${lcpu[*]} CPURUNS[$id,nginx]=${ncpu[*]}
    log "case $id, direct: latency at $rate/s"
    r=$(latency "${urls[direct]}" "$body" "$sse" "$rate")
    P50[$id,direct]=${r% *} P99[$id,direct]=${r#* }
    local l50=() l99=() n50=() n99=()
    for ((i = 1; i <= runs; i++)); do
        for peer in llmux nginx; do
            log "case $id, $peer: latency at $rate/s (run $i of $runs)"
            r=$(latency "${urls[$peer]}" "$body" "$sse" "$rate")
            if [[ $peer == llmux ]]; then
                l50+=("${r% *}")
                l99+=("${r#* }")
            else
                n50+=("${r% *}")
                n99+=("${r#* }")
            fi
        done
    done
    P50[$id,llmux]=$(median "${l50[@]}") P99[$id,llmux]=$(median "${l99[@]}")
    P50[$id,nginx]=$(median "${n50[@]}") P99[$id,nginx]=$(median "${n99[@]}")
    P99RUNS[$id,llmux]=${l99[*]} P99RUNS[$id,nginx]=${n99[*]}
    RSS[$id,llmux]=$(mib "$(status_kib "$lpid" VmHWM)")
    RSS[$id,nginx]=$(mib "$(status_kib "$nworker" VmHWM)")
    RSS[$id,direct]="—"
    LABEL[$id]=$runs
    stop_pid "$lpid"
    stop_pid "$npid"
}

for c in $CASES; do run_case "$c"; done

# ---------------------------------------------------------------- report
title() {
    case $1 in
    1k-last) echo "1 KB body, model last" ;; 1k-first) echo "1 KB body, model first" ;;
    64k-last) echo "64 KB body, model last" ;; 64k-first) echo "64 KB body, model first" ;;
    1m-last) echo "1 MB body, model last" ;; 1m-first) echo "1 MB body, model first" ;;
    sse) echo "SSE stream of 20 chunks (1 KB body, \"stream\": true, llmux-standin backend)" ;;
    esac
}
size_label() { case $1 in 1k) echo "1 KB" ;; 64k) echo "64 KB" ;; 1m) echo "1 MB" ;; esac; }
has_case() { [[ " $CASES " == *" $1 "* ]]; }

REPORT=$TMP/report.md
{
    cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    profile=$(awk '/^\[profile\.release\]/ { f = 1; next } /^\[/ { f = 0 } f && NF && !/^#/' Cargo.toml | paste -sd ';' - | sed 's/;/; /g')
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && commit+=" (+ uncommitted changes)"
    echo "# llmux vs nginx: side-by-side comparison"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- CPU: ${cpu_model:-unknown} ($(nproc) CPUs); load generator and backend pinned to CPU 0, proxy to CPU 1"
    echo "- $(rustc -V); release profile: ${profile:-defaults}${RUSTFLAGS:+; RUSTFLAGS=$RUSTFLAGS}; llmux commit $commit"
    echo "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), one worker; $("$WRK" -v 2>&1 | head -n1 | awk '{ print $1, $2 }'); $("$OHA" --version)"
    echo "- req/s: \`wrk -t1 -c$CONNS -d$DURATION\`; CPU: utime+stime of the proxy over \`oha -n $N -c $CONNS\` ($N_1M for 1 MB), the median of $CPU_RUNS interleaved llmux/nginx runs; p50/p99: \`oha -q $RATE -z $LAT_DURATION --latency-correction -c $CONNS\` ($RATE_1M/s for 1 MB), in ms, the median of $RUNS interleaved llmux/nginx runs for 1 KB bodies, one run otherwise"
    echo "- direct: no proxy, so its CPU column is the backend's CPU per request; peak RSS is VmHWM after the runs (nginx: its one worker)"
    echo
    for c in $CASES; do
        echo "## $(title "$c")"
        echo
        echo "| peer | req/s | CPU µs/req | CPU llmux/nginx | p50 ms | p99 ms | peak RSS MiB |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        echo "| direct | ${RPS[$c,direct]} | ${CPU[$c,direct]} (backend) | | ${P50[$c,direct]} | ${P99[$c,direct]} | — |"
        echo "| nginx | ${RPS[$c,nginx]} | ${CPU[$c,nginx]} | 1.00× | ${P50[$c,nginx]} | ${P99[$c,nginx]} | ${RSS[$c,nginx]} |"
        echo "| llmux | ${RPS[$c,llmux]} | ${CPU[$c,llmux]} | **$(ratio "${CPU[$c,llmux]}" "${CPU[$c,nginx]}")×** | ${P50[$c,llmux]} | ${P99[$c,llmux]} | ${RSS[$c,llmux]} |"
        echo
        if ((CPU_RUNS > 1)); then
            echo "CPU µs/req of each run, llmux: ${CPURUNS[$c,llmux]}; nginx: ${CPURUNS[$c,nginx]}"
            echo
        fi
        if [[ ${LABEL[$c]} -gt 1 ]]; then
            echo "p99 of each run (ms), llmux: ${P99RUNS[$c,llmux]}; nginx: ${P99RUNS[$c,nginx]}"
            echo
        fi
    done
    echo "## Memory"
    echo
    echo "| proxy | idle RSS MiB | RSS with $IDLE_CONNS idle keep-alive connections MiB | added MiB |"
    echo "|---|---:|---:|---:|"
    echo "| llmux | $(mib "$MEM_LLMUX_IDLE") | $(mib "$MEM_LLMUX_CONNS") | $(mib $((MEM_LLMUX_CONNS - MEM_LLMUX_IDLE))) |"
    echo "| nginx worker (master: $(mib "$MEM_NGINX_MASTER") MiB) | $(mib "$MEM_NGINX_IDLE") | $(mib "$MEM_NGINX_CONNS") | $(mib $((MEM_NGINX_CONNS - MEM_NGINX_IDLE))) |"
    echo
    echo "$UPLOADS concurrent 1 MB uploads, all waiting in llmux's queue at once (the model asleep behind a gate), then served:"
    echo
    echo "| bodies sent | bodies MiB | llmux RSS while they wait MiB | peak RSS (VmHWM) MiB |"
    echo "|---|---:|---:|---:|"
    for piece in 0 16000; do
        echo "| $(pieces_label "$piece") | $(mib "${MEM_UP_BODIES[$piece]}") | $(mib "${MEM_UP_QUEUED[$piece]}") | $(mib "${MEM_UP_PEAK[$piece]}") |"
    done
    echo
    echo "## Budgets"
    echo
    echo "| budget | measured | limit | |"
    echo "|---|---:|---:|---|"
    for pair in "1k 1.0" "64k 1.5" "1m 2.0"; do
        read -r s lim <<<"$pair"
        if has_case "$s-last"; then
            r=$(ratio "${CPU[$s-last,llmux]}" "${CPU[$s-last,nginx]}")
            echo "| CPU µs/req, $(size_label "$s") model last, llmux/nginx | ${r}× | ≤ ${lim}× | $(verdict "$r" "$lim") |"
        fi
    done
    for s in 1k 64k 1m; do
        if has_case "$s-last" && has_case "$s-first"; then
            r=$(ratio "${CPU[$s-first,llmux]}" "${CPU[$s-last,llmux]}")
            echo "| llmux CPU µs/req, $(size_label "$s") model first / model last | ${r}× | ≤ 1.00× | $(verdict "$r" 1.0) |"
        fi
    done
    if has_case 1k-last; then
        r=$(ratio "${P99[1k-last,llmux]}" "${P99[1k-last,nginx]}")
        note=
        ((RUNS >= 5)) || note=" (RUNS=$RUNS < 5: indicative only)"
        echo "| p99 at 1 KB, $RATE/s, median of $RUNS interleaved runs, llmux/nginx$note | ${r}× | ≤ 1.1× | $(verdict "$r" 1.1) |"
    fi
    if has_case sse; then
        r=$(ratio "${CPU[sse,llmux]}" "${CPU[sse,nginx]}")
        echo "| SSE CPU µs per streamed request, llmux/nginx | ${r}× | ≤ 1.00× | $(verdict "$r" 1.0) |"
    fi
    echo "| llmux idle RSS | $(mib "$MEM_LLMUX_IDLE") MiB | < 10 MiB | $(verdict "$(mib "$MEM_LLMUX_IDLE")" 10 1) |"
    d=$(mib $((MEM_LLMUX_CONNS - MEM_LLMUX_IDLE)))
    echo "| llmux RSS added by $IDLE_CONNS idle keep-alive connections | $d MiB | < 20 MiB | $(verdict "$d" 20 1) |"
    for piece in 0 16000; do
        lim=$(awk -v b="${MEM_UP_BODIES[$piece]}" 'BEGIN { printf "%.1f", 1.5 * b / 1024 + 16 }')
        echo "| llmux peak RSS with $UPLOADS concurrent 1 MB uploads, $(pieces_label "$piece") | $(mib "${MEM_UP_PEAK[$piece]}") MiB | < 1.5 × $(mib "${MEM_UP_BODIES[$piece]}") + 16 = $lim MiB | $(verdict "$(mib "${MEM_UP_PEAK[$piece]}")" "$lim" 1) |"
    done
    if [[ $QUICK == 1 ]]; then
        echo
        echo "QUICK=1: a smoke test with short runs; these figures are not results."
    fi
} >"$REPORT"

mkdir -p "$(dirname "$RESULTS")"
cp "$REPORT" "$RESULTS"
cat "$REPORT"
log "report written to $RESULTS"
