#!/usr/bin/env bash
#   PRETRAINED=DIR bash examples/reddit/train.sh WORK_DIR
# The train stage of the reddit pipeline: ../common/train.sh with this folder's settings.sh.
exec bash "$(dirname "$0")/../common/train.sh" "$(dirname "$0")/settings.sh" "$@"
