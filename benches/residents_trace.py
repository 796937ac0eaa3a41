#!/usr/bin/env python3
"""A RAG pipeline's trace against llmux, with and without a capacity budget.

Two stand-in backends, `chat` and `embed`, whose hooks simulate a wake that
costs WAKE_SECS and a sleep that costs SLEEP_SECS. PIPELINES clients each run
ROUNDS rounds of "embed the question, then ask the chat model", as a RAG
pipeline does. The same trace runs twice: with no `capacity` (one model at a
time: every round pays two switches) and with `capacity: 2` (both resident).
Prints switches, mean and p95 wait per request (client latency less the
backend's own time) and the wall time of each run.

    benches/residents_trace.py [LLMUX_BINARY]

Loopback only; every process it starts is stopped at the end.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLMUX = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/llmux"))
STANDIN = os.path.join(os.path.dirname(LLMUX), "llmux-standin")
WAKE_SECS, SLEEP_SECS = 2.0, 0.5
PIPELINES, ROUNDS = 2, 10
EMBED_MS, CHAT_MS = 50, 300

HOOKS = f"""
    wake: sleep {WAKE_SECS}; touch up-$LLMUX_MODEL
    sleep: sleep {SLEEP_SECS}; rm -f up-$LLMUX_MODEL
    alive: test -f up-$LLMUX_MODEL
"""


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    line = p.stdout.readline().strip()
    assert line.startswith("listening on "), line
    threading.Thread(target=p.stdout.read, daemon=True).start()
    return p, line.removeprefix("listening on ")


def post(addr, model, delay_ms):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"http://{addr}/v1/chat/completions", data=body, method="POST")
    req.add_header("x-standin-delay-ms", str(delay_ms))
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        assert r.status == 200
    return time.monotonic() - t0 - delay_ms / 1000


def switches(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics") as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("llmux_switches_total{") and 'result="done"' in l)


def run(capacity):
    tmp = tempfile.mkdtemp()
    procs = []
    try:
        backends = {m: start([STANDIN, "--port", "0", "--model", m]) for m in ("chat", "embed")}
        procs += [p for p, _ in backends.values()]
        models = "".join(f"  {m}:\n    port: {a.rsplit(':', 1)[1]}\n{HOOKS}" for m, (_, a) in backends.items())
        cap = f"capacity: {capacity}\n" if capacity else ""
        with open(os.path.join(tmp, "llmux.yaml"), "w") as f:
            f.write(f"host: 127.0.0.1\nport: 0\n{cap}models:\n{models}")
        p, addr = start([LLMUX, "-c", os.path.join(tmp, "llmux.yaml")], cwd=tmp)
        procs.append(p)
        waits, lock = [], threading.Lock()

        def pipeline():
            for _ in range(ROUNDS):
                for model, ms in (("embed", EMBED_MS), ("chat", CHAT_MS)):
                    w = post(addr, model, ms)
                    with lock:
                        waits.append(w)

        t0 = time.monotonic()
        threads = [threading.Thread(target=pipeline) for _ in range(PIPELINES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        waits.sort()
        return switches(addr), statistics.mean(waits), waits[int(len(waits) * 0.95)], wall, len(waits)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    print(f"{PIPELINES} pipelines x {ROUNDS} rounds of embed ({EMBED_MS} ms) then chat ({CHAT_MS} ms); "
          f"wake {WAKE_SECS} s, sleep {SLEEP_SECS} s")
    print("| capacity | switches | requests | mean wait | p95 wait | wall |")
    print("|---|---|---|---|---|---|")
    for capacity in (None, 2):
        s, mean, p95, wall, n = run(capacity)
        print(f"| {capacity or 'unset'} | {s:.0f} | {n} | {mean:.2f} s | {p95:.2f} s | {wall:.1f} s |")


if __name__ == "__main__":
    main()
