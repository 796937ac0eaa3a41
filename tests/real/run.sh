#!/usr/bin/env bash
# Installs the real llama.cpp backend (idempotent, cached outside the
# checkout) and runs the whole test suite with the real-backend suite
# required. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/real/install.sh
LLMUX_REQUIRE_REAL=1 exec cargo test "$@"
