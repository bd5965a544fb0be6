#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/cnndm/prepare.sh RAW_DIR WORK_DIR
# The prepare stage of the cnndm pipeline: ../common/prepare.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/prepare.sh" "$(dirname "$0")/settings.sh" "$@"
