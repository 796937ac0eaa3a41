#!/bin/sh
# The Docker Engine API over its unix socket, for the other hooks:
#   . ./hooks/docker.sh; docker_api POST /containers/NAME/start
# Podman serves the same API: DOCKER_SOCKET=/run/podman/podman.sock.
DOCKER_SOCKET="${DOCKER_SOCKET:-/var/run/docker.sock}"
docker_api() {
    # $1 method, $2 path; prints the body; fails on HTTP >= 400.
    curl -fsS --unix-socket "$DOCKER_SOCKET" -X "$1" "http://docker$2"
}
container_running() {
    docker_api GET "/containers/$1/json" | grep -q '"Running": *true'
}
# Polls the backend's /health until it answers, within the hook's timeout.
wait_healthy() {
    until curl -fsS -o /dev/null --max-time 2 "$LLMUX_UPSTREAM/health"; do sleep 1; done
}
