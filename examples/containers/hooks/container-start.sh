#!/bin/sh
# llmux wake hook: start container $CONTAINER (204 started, 304 already
# running: both fine) and wait until its server answers.
set -eu
: "${CONTAINER:?set CONTAINER in the wake hook line}" "${LLMUX_UPSTREAM:?}"
. ./hooks/docker.sh
docker_api POST "/containers/$CONTAINER/start" >/dev/null
wait_healthy
