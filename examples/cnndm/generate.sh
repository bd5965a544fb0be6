#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/cnndm/generate.sh WORK_DIR
# The generate stage of the cnndm pipeline: ../common/generate.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/generate.sh" "$(dirname "$0")/settings.sh" "$@"
