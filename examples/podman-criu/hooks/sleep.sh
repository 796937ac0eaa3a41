#!/usr/bin/env bash
# llmux sleep hook: checkpoint this model's container with CRIU. The
# container's processes are dumped to disk and stopped, so their memory is
# freed; wake.sh restores them. --keep keeps CRIU's dump/log files (handy
# when a checkpoint fails). --tcp-established lets CRIU dump the container
# even if llmux still holds an idle keep-alive connection to it.
set -euo pipefail
: "${LLMUX_MODEL:?}" "${LLMUX_PORT:?}"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

status="$(podman container inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null || echo missing)"
[ "$status" = running ] || exit 0
podman container checkpoint --keep --tcp-established "$CONTAINER" >/dev/null
