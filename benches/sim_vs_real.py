#!/usr/bin/env python3
"""`llmux simulate` against the real binary on the same trace (issue 12).

Generates a deterministic trace (three models, Poisson arrivals skewed
towards one model, service times of 0.2-2 s), then for each policy:

(a) runs `llmux simulate -c CONFIG --trace TRACE --policy P --json`;
(b) replays the trace through the real `llmux` in front of one
    `llmux-standin --concurrency K` per model (started once, ephemeral
    ports), with hooks that only cost time:
        wake:  sleep W; touch up-$LLMUX_MODEL
        sleep: sleep S; rm -f up-$LLMUX_MODEL
        alive: test -f up-$LLMUX_MODEL
    each request sent at its trace time with `"standin_service_ms"` set
    to its service time. The two policies replay at once, each with its
    own llmux, stand-ins and hook directory (the trace's length in wall
    time, not twice that).

The same config file drives both (the simulator ignores the hooks and
ports). Switches are `llmux_switches_total{result="done"}` from
/metrics; a request's wait is its latency minus its service time, on both
sides (the simulator's per-model mean latency minus the trace's mean
service time; the simulator's own "wait", arrival to admission, is
printed beside it). Prints a table and whether the issue's tolerance holds
(switches within 10 %, mean wait within 20 %).

    benches/sim_vs_real.py [--minutes N] [--seed S] [--bin DIR] [--keep]

Loopback only; stops every process it starts. Python 3, stdlib only.
"""

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ["fifo", "cost_aware"]

# name: (wake_secs, sleep_secs, concurrency, share of the traffic)
MODELS = {
    "hot": (2.0, 0.5, 4, 0.6),
    "warm": (3.0, 1.0, 2, 0.3),
    "cold": (1.5, 0.3, 2, 0.1),
}
RATE = 0.5  # requests per second, all models together


def generate(minutes, seed):
    """The trace: [(t, model, service_secs)], Poisson arrivals at RATE."""
    rng = random.Random(seed)
    names = list(MODELS)
    weights = [MODELS[m][3] for m in names]
    out, t, end = [], 0.0, minutes * 60.0
    while True:
        t += rng.expovariate(RATE)
        if t >= end:
            return out
        model = rng.choices(names, weights)[0]
        service = round(rng.uniform(0.2, 2.0), 3)
        out.append((round(t, 3), model, service))


def write_trace(path, trace):
    header = {m: {"wake_secs": w, "sleep_secs": s, "concurrency": k} for m, (w, s, k, _) in MODELS.items()}
    with open(path, "w") as f:
        f.write(json.dumps({"models": header}) + "\n")
        for t, m, service in trace:
            f.write(json.dumps({"t": t, "model": m, "service_secs": service}) + "\n")


def write_config(path, ports, policy, hookdir):
    lines = ["host: 127.0.0.1", "port: 0", "models:"]
    for m, (wake, sleep, _, _) in MODELS.items():
        up = os.path.join(hookdir, "up-$LLMUX_MODEL")
        lines += [
            f"  {m}:",
            f"    port: {ports[m]}",
            f"    wake: 'sleep {wake}; touch {up}'",
            f"    sleep: 'sleep {sleep}; rm -f {up}'",
            f"    alive: 'test -f {up}'",
        ]
    lines += ["policy:", f"  scheduler: {policy}", "  request_timeout_secs: 600"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Proc:
    """A child that prints `listening on ADDR` first; stopped by stop()."""

    def __init__(self, args, stderr):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                  text=True, start_new_session=True)
        line = self.p.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{args[0]}: first line {line!r}")
        self.addr = line.split()[-1]
        self.port = int(self.addr.rsplit(":", 1)[1])
        threading.Thread(target=lambda: self.p.stdout.read(), daemon=True).start()

    def stop(self):
        if self.p.poll() is None:
            # Its own process group: the hooks it runs go with it.
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()


def simulate(llmux, config, trace_path, policy, trace):
    args = [llmux, "simulate", "-c", config, "--trace", trace_path, "--policy", policy, "--json"]
    r = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[0])
    models = r["models"].values()
    n = sum(m["n"] for m in models) or 1
    latency = sum(m["latency"]["mean"] * m["n"] for m in models) / n
    admission = sum(m["wait"]["mean"] * m["n"] for m in models) / n
    mean_service = sum(s for _, _, s in trace) / len(trace)
    # latency - service, averaged: valid as the mean over served requests
    # when every request is served (checked by the caller).
    return {"switches": r["switches"], "wait": latency - mean_service, "admission": admission,
            "served": r["served"], "requests": r["requests"]}


def send(host, port, model, service, timeout):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "standin_service_ms": int(round(service * 1000))})
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    finally:
        conn.close()
    return status, time.monotonic() - start


def service_estimates(host, port):
    """The scheduler's measured service time per model (/llmux/status), ms."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/llmux/status")
    status = json.loads(conn.getresponse().read())
    conn.close()
    return {m["id"]: m["service_ms"] for m in status.get("scheduler", {}).get("models", [])}


def metric_switches(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = 0
    for line in text.splitlines():
        if line.startswith("llmux_switches_total{") and 'result="done"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def replay(llmux, config, hookdir, trace, log):
    for f in os.listdir(hookdir):
        if f.startswith("up-"):
            os.remove(os.path.join(hookdir, f))
    with open(log, "w") as err:
        mux = Proc([llmux, "-c", config], err)
    try:
        host, port = mux.addr.rsplit(":", 1)
        port = int(port)
        results = [None] * len(trace)
        threads = []

        def one(i, model, service):
            try:
                results[i] = send(host, port, model, service, 900)
            except OSError as e:
                results[i] = (str(e), math.nan)

        t0 = time.monotonic()
        for i, (t, model, service) in enumerate(trace):
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # scheduling: send at the trace time
            th = threading.Thread(target=one, args=(i, model, service), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
        switches = metric_switches(host, port)
        estimates = service_estimates(host, port)
    finally:
        mux.stop()
    ok = [(lat, trace[i][2]) for i, (status, lat) in enumerate(results) if status == 200]
    waits = [lat - service for lat, service in ok]
    return {"switches": switches, "wait": sum(waits) / max(len(waits), 1), "served": len(ok),
            "requests": len(trace), "min_wait": min(waits, default=0.0),
            "service_ms_llmux": estimates,
            "service_ms_trace": {m: round(1000 * sum(s for _, x, s in trace if x == m) / max(1, sum(1 for _, x, _ in trace if x == m)))
                                 for m in MODELS}}


def pct(sim, real):
    if sim == 0:
        return 0.0 if real == 0 else math.inf
    return 100.0 * (real - sim) / sim


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="trace length [10]")
    ap.add_argument("--seed", type=int, default=12, help="trace seed [12]")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"), help="where llmux and llmux-standin are")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, trace, llmux logs)")
    a = ap.parse_args()
    llmux = os.path.join(a.bin, "llmux")
    standin = os.path.join(a.bin, "llmux-standin")
    trace = generate(a.minutes, a.seed)
    tmp = tempfile.mkdtemp(prefix="llmux-sim-vs-real-")
    trace_path = os.path.join(tmp, "trace.jsonl")
    write_trace(trace_path, trace)
    counts = {m: sum(1 for _, x, _ in trace if x == m) for m in MODELS}
    print(f"trace: {len(trace)} requests over {a.minutes:g} min (seed {a.seed}), {counts}; "
          f"mean service {sum(s for _, _, s in trace) / len(trace):.3f} s", file=sys.stderr)
    rows = {}
    errors = []

    def run_policy(policy):
        # Each policy has its own stand-ins and hook directory, so the two
        # replays run side by side without touching each other.
        hookdir = os.path.join(tmp, f"hooks-{policy}")
        os.mkdir(hookdir)
        backends = []
        try:
            for m, (_, _, k, _) in MODELS.items():
                backends.append(Proc([standin, "--port", "0", "--model", m, "--concurrency", str(k)],
                                     subprocess.DEVNULL))
            ports = {m: b.port for m, b in zip(MODELS, backends)}
            config = os.path.join(tmp, f"{policy}.yaml")
            write_config(config, ports, policy, hookdir)
            sim = simulate(llmux, config, trace_path, policy, trace)
            print(f"{policy}: simulated {sim}; replaying for {a.minutes:g} min", file=sys.stderr)
            real = replay(llmux, config, hookdir, trace, os.path.join(tmp, f"{policy}.log"))
            print(f"{policy}: real {real}", file=sys.stderr)
            rows[policy] = (policy, sim, real)
        except Exception as e:  # reported after the others finish
            errors.append(f"{policy}: {e!r}")
        finally:
            for b in backends:
                b.stop()

    try:
        runs = [threading.Thread(target=run_policy, args=(p,)) for p in POLICIES]
        for r in runs:
            r.start()
        for r in runs:
            r.join()
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    rows = [rows[p] for p in POLICIES]

    print(f"| policy | switches sim | switches real | diff | mean wait sim (s) | mean wait real (s) | diff "
          f"| sim admission wait (s) | served sim/real | within tolerance |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    for policy, sim, real in rows:
        ds, dw = pct(sim["switches"], real["switches"]), pct(sim["wait"], real["wait"])
        ok = abs(ds) <= 10 and abs(dw) <= 20 and sim["served"] == real["served"] == len(trace)
        all_ok &= ok
        print(f"| {policy} | {sim['switches']} | {real['switches']} | {ds:+.1f}% | {sim['wait']:.3f} | "
              f"{real['wait']:.3f} | {dw:+.1f}% | {sim['admission']:.3f} | {sim['served']}/{real['served']} "
              f"| {'yes' if ok else 'NO'} (switches ±10%, wait ±20%) |")
    print(f"\n{len(trace)} requests, {a.minutes:g} min, seed {a.seed}; the policies replayed side by side, "
          f"each with its own llmux and stand-ins")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
