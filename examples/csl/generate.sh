#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/csl/generate.sh WORK_DIR
# The generate stage of the csl pipeline: ../common/generate.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/generate.sh" "$(dirname "$0")/settings.sh" "$@"
