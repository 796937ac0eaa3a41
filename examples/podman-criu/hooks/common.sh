# shellcheck shell=bash disable=SC2034
# Sourced by the hooks. Settings (environment, e.g. inline in config.yaml):
#   MODEL_GGUF     the GGUF to serve (default: the one tests/real/install.sh
#                  put in ${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real})
#   LLAMA_IMAGE    container image (default ghcr.io/ggml-org/llama.cpp:server;
#                  the CUDA build is ...:server-cuda)
#   GPU_DEVICE     e.g. nvidia.com/gpu=all (CDI) to give the container a GPU
if [ -z "${MODEL_GGUF:-}" ]; then
    env_file="${LLMUX_REAL_CACHE:-$HOME/.cache/llmux-real}/env"
    # shellcheck disable=SC1090
    [ -r "$env_file" ] && . "$env_file"
    MODEL_GGUF="${LLMUX_REAL_MODEL:?set MODEL_GGUF}"
fi
MODEL_DIR="$(dirname "$MODEL_GGUF")"
MODEL_FILE="$(basename "$MODEL_GGUF")"
IMAGE="${LLAMA_IMAGE:-ghcr.io/ggml-org/llama.cpp:server}"
GPU_FLAGS=()
if [ -n "${GPU_DEVICE:-}" ]; then
    GPU_FLAGS=(--device "$GPU_DEVICE")
fi
CONTAINER="llmux-$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9_.-' '_')"
