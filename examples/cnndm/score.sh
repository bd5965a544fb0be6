#!/usr/bin/env bash
#   bash examples/cnndm/score.sh WORK_DIR
# The score stage of the cnndm pipeline: ../common/score.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/score.sh" "$(dirname "$0")/settings.sh" "$@"
