#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/ttnews/generate.sh WORK_DIR
# The generate stage of the ttnews pipeline: ../common/generate.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/generate.sh" "$(dirname "$0")/settings.sh" "$@"
