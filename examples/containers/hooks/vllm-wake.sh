#!/bin/sh
# llmux wake hook for vLLM sleep mode in a container:
# - with CONTAINER set and the container not running: start it through the
#   Docker API (it comes up awake) and wait for /health;
# - asleep: POST /wake_up.
set -eu
: "${LLMUX_UPSTREAM:?}"
. ./hooks/docker.sh
if [ -n "${CONTAINER:-}" ] && ! container_running "$CONTAINER"; then
    docker_api POST "/containers/$CONTAINER/start" >/dev/null
fi
wait_healthy
if curl -fsS --max-time 5 "$LLMUX_UPSTREAM/is_sleeping" | grep -Eq '"is_sleeping": *true'; then
    curl -fsS -X POST "$LLMUX_UPSTREAM/wake_up"
fi
curl -fsS --max-time 5 "$LLMUX_UPSTREAM/is_sleeping" | grep -Eq '"is_sleeping": *false'
