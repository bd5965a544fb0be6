#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/reddit/generate.sh WORK_DIR
# The generate stage of the reddit pipeline: ../common/generate.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/generate.sh" "$(dirname "$0")/settings.sh" "$@"
