#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/csl/train.sh WORK_DIR
# The train stage of the csl pipeline: ../common/train.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/train.sh" "$(dirname "$0")/settings.sh" "$@"
