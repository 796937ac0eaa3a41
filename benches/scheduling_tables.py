#!/usr/bin/env python3
"""The FIFO vs cost_aware tables of docs/scheduling.md, from `llmux simulate`.

For each built-in scenario, switch costs of 2, 10, 30 and 60 s and 2 to 4
models (default seed, SLO three times the switch cost), runs both policies
and prints one Markdown table per scenario, with the exact command of each
row's run.

    benches/scheduling_tables.py [LLMUX_BINARY]

Deterministic: the same binary prints the same tables.
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLMUX = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/llmux"))
# (title, scenario, extra parameters). "skewed_heavy" is the skewed
# scenario at issue 12's own example load: 2 requests/s for the hot model
# and 0.1/s for the others, 2 s requests, backends that run 8 at once.
SCENARIOS = [
    ("skewed", "skewed", []),
    ("skewed_heavy", "skewed", ["rate=2.1", "hot=0.952", "service_secs=2", "concurrency=8"]),
    ("agents", "agents", []),
    ("poisson", "poisson", []),
    ("bursty", "bursty", []),
    ("llama_swap_612", "llama_swap_612", []),
]
COSTS = [2, 10, 30, 60]
MODELS = [2, 3, 4]
# The models each scenario can use: agents are two (one each), the
# llama-swap #612 burst names three.
SCENARIO_MODELS = {"agents": [2], "llama_swap_612": [3]}


def config(n, tmp):
    path = os.path.join(tmp, f"models{n}.yaml")
    with open(path, "w") as f:
        f.write("models:\n")
        for i in range(n):
            name = "abcd"[i]
            f.write(f"  {name}: {{port: {9001 + i}, wake: 'true', sleep: 'true', alive: 'true'}}\n")
    return path


def run(cfg, scenario, extra, cost, n):
    args = [LLMUX, "simulate", "-c", cfg, "--scenario", scenario, "--param", f"switch_secs={cost}",
            "--param", f"models={n}"]
    for p in extra:
        args += ["--param", p]
    args += ["--policy", "fifo", "--policy", "cost_aware", "--slo", str(3 * cost), "--json"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()], args


def waits(r):
    models = r["models"].values()
    n = sum(m["n"] for m in models) or 1
    mean = sum(m["wait"]["mean"] * m["n"] for m in models) / n
    return mean, max((m["wait"]["max"] for m in models), default=0.0)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for title, scenario, extra in SCENARIOS:
            print(f"### {title}\n")
            print("| switch | models | policy | requests | served | switches | goodput (SLO 3x switch) | mean wait | max wait |")
            print("|---|---|---|---|---|---|---|---|---|")
            for cost in COSTS:
                for n in SCENARIO_MODELS.get(title, MODELS):
                    rows, args = run(config(n, tmp), scenario, extra, cost, n)
                    for r in rows:
                        mean, worst = waits(r)
                        share = 100.0 * r["goodput"] / max(r["requests"], 1)
                        print(f"| {cost} s | {n} | {r['policy']} | {r['requests']} | {r['served']} | {r['switches']} "
                              f"| {r['goodput']} ({share:.0f}%) | {mean:.1f} s | {worst:.1f} s |")
            print()
            params = "".join(f"--param {p} " for p in extra)
            print(f"`llmux simulate -c CONFIG --scenario {scenario} --param switch_secs=S --param models=N {params}"
                  f"--policy fifo --policy cost_aware --slo 3S --json` (CONFIG: N models a, b, c, d)\n")


if __name__ == "__main__":
    main()
