#!/bin/sh
# llmux sleep hook: stop container $CONTAINER, giving it 30 s before the
# runtime's SIGKILL (304: already stopped, fine).
set -eu
: "${CONTAINER:?set CONTAINER in the sleep hook line}"
. ./hooks/docker.sh
docker_api POST "/containers/$CONTAINER/stop?t=30" >/dev/null
