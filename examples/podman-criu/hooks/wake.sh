#!/usr/bin/env bash
# llmux wake hook: bring this model's llama.cpp container back.
# - checkpointed by sleep.sh: `podman container restore` (CRIU) resumes the
#   server exactly where it was, model already loaded;
# - no checkpoint (never slept, or it was lost): plain `podman start`;
# - no container yet: `podman run` creates it (cold start).
# Then wait for /health 200. Needs root: CRIU checkpointing is rootful only.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

status="$(podman container inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null || echo missing)"
case "$status" in
    running) ;;
    missing)
        podman run -d --name "$CONTAINER" \
            -p "127.0.0.1:$LLMUX_PORT:8080" \
            -v "$MODEL_DIR:/models:ro" \
            "${GPU_FLAGS[@]}" \
            "$IMAGE" \
            -m "/models/$MODEL_FILE" --host 0.0.0.0 --port 8080 \
            --alias "$LLMUX_MODEL" -c 2048 -np 1 --no-webui >/dev/null
        ;;
    *)
        # --tcp-established: see sleep.sh. Restore consumes the checkpoint;
        # each sleep writes a fresh one.
        podman container restore --tcp-established "$CONTAINER" >/dev/null ||
            podman start "$CONTAINER" >/dev/null
        ;;
esac

until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$LLMUX_PORT/health"; do
    [ "$(podman container inspect -f '{{.State.Status}}' "$CONTAINER")" = running ] || {
        podman logs --tail 20 "$CONTAINER" >&2
        exit 1
    }
    sleep 0.2
done
