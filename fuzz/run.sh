#!/usr/bin/env bash
# Runs llmux's fuzz targets with cargo-fuzz (libFuzzer), deterministically:
# a fixed seed and a fixed number of runs per target, starting from the
# committed seeds in fuzz/corpus/<target>/. Exits 1 if any target finds
# an input that breaks a property (the input is saved under
# fuzz/artifacts/<target>/ and printed with the command to reproduce it),
# 2 if the targets do not build.
#
#   fuzz/run.sh                      # every target, ~2 minutes on 2 cores
#   fuzz/run.sh request              # one target
#   RUNS_SCALE=10 fuzz/run.sh        # ten times the runs
#   FUZZ_TIME=300 fuzz/run.sh        # a campaign: 300 s per target instead
#   FUZZ_SANITIZER=none fuzz/run.sh  # without AddressSanitizer
#   KEEP_CORPUS=1 fuzz/run.sh        # keep what libFuzzer finds, in
#                                    # fuzz/target/found/<target>/, for the
#                                    # next run (not deterministic then)
#
# Needs only the stable toolchain: libFuzzer's instrumentation uses
# unstable rustc flags, which RUSTC_BOOTSTRAP=1 allows on stable. cargo-fuzz
# is installed from crates.io if it is missing.
set -euo pipefail
cd "$(dirname "$0")"

# Runs per target at RUNS_SCALE=1: about 40 s each on this project's
# 2-core machines, with AddressSanitizer and overflow checks (measured:
# extract_model ~15k/s, config ~10k/s, request ~3k/s).
declare -A RUNS=([extract_model]=500000 [config]=400000 [request]=100000 [rewrite_model]=400000 [multipart]=200000)
declare -A DICT=([extract_model]=json [config]=yaml [request]=http [rewrite_model]=json [multipart]=multipart)
ALL=(extract_model config request rewrite_model multipart)
scale=${RUNS_SCALE:-1}
sanitizer=${FUZZ_SANITIZER:-address}
targets=("$@")
((${#targets[@]})) || targets=("${ALL[@]}")

for t in "${targets[@]}"; do
    [[ -n "${RUNS[$t]:-}" ]] || { echo "unknown target '$t' (targets: ${ALL[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# Cargo caches rustc's answers without regard to RUSTC_BOOTSTRAP: one
# `cargo fuzz build` without it would leave a cached "-Z needs nightly".
export CARGO_CACHE_RUSTC_INFO=0
fuzz() { cargo fuzz "$@"; }
# A toolchain pinned by rustup (rust-toolchain files) wins over the default.
if rustup toolchain list 2>/dev/null | grep -q '^stable'; then
    fuzz() { cargo +stable fuzz "$@"; }
fi

# Release with debug assertions and overflow checks (-a): an arithmetic
# overflow in llmux is a finding too.
build_flags=(-O -a -s "$sanitizer")
echo "==> building the targets (sanitizer: $sanitizer)"
fuzz build "${build_flags[@]}" || { echo "==> the build failed" >&2; exit 2; }

failed=()
for t in "${targets[@]}"; do
    if [[ -n "${KEEP_CORPUS:-}" ]]; then
        found="target/found/$t"
        mkdir -p "$found"
    else
        found=$(mktemp -d)
    fi
    if [[ -n "${FUZZ_TIME:-}" ]]; then
        budget=(-max_total_time="$FUZZ_TIME")
        what="${FUZZ_TIME}s"
    else
        budget=(-runs=$((RUNS[$t] * scale)))
        what="$((RUNS[$t] * scale)) runs"
    fi
    echo "==> $t: $what, seed 1"
    # `fuzz run` rebuilds if the sources changed meanwhile: a build error
    # is not a finding.
    fuzz build "${build_flags[@]}" "$t" || { echo "==> the build failed" >&2; exit 2; }
    # New inputs go to $found (first corpus directory), never to the
    # committed seeds.
    if fuzz run "${build_flags[@]}" "$t" "$found" "corpus/$t" -- \
        "${budget[@]}" -seed=1 -dict="dict/${DICT[$t]}.dict" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1; then
        echo "==> $t: no finding"
    else
        echo "==> $t: FINDING (see above; the input is in fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
    [[ -n "${KEEP_CORPUS:-}" ]] || rm -rf "$found"
done

if ((${#failed[@]})); then
    echo "==> findings in: ${failed[*]}"
    exit 1
fi
echo "==> no findings in: ${targets[*]}"
