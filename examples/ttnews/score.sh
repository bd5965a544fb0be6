#!/usr/bin/env bash
#   bash examples/ttnews/score.sh WORK_DIR
# The score stage of the ttnews pipeline: ../common/score.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/score.sh" "$(dirname "$0")/settings.sh" "$@"
