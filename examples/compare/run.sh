#!/usr/bin/env bash
# Every exit method on the built-in corpus, on CPU, at a larger budget than the demo
# (examples/sample/run.sh): full depth, static half depth, HashEE encoder and encoder+decoder
# exits (the frequency table, and the difficulty table at three target mean exits), CALM (softmax
# and classifier), DAT, ConsistentEE, LECO and FREE, and HashEE's encoder exits under a half-depth
# decoder and under CALM, fine-tuned from one full-depth base model with the same updates and seed,
# each dynamic method at three values of its knob. Prints the table and writes
# WORK_DIR/compare/{compare.json,compare.txt,frontier.png} (docs/comparison.md).
#
#   bash examples/compare/run.sh [WORK_DIR]      (default: examples/compare/work)
#
# Knobs (environment): BASE_UPDATES, MAX_UPDATE, FROZEN_UPDATES, METHODS, TIMING_ROUNDS, BEAM,
# CALIBRATE (e.g. 0.01: mark each method's fastest setting certified to lose at most one ROUGE-L
# point on average, the signed drop on the calib split; default: none), EXTRA_ARGS (more
# hashee-compare options, e.g. "--sweep static-half=4,3,2").
# Resumable: rerun after an interruption and finished runs are kept.
set -euo pipefail

HERE=$(dirname "$0")
WORK=${1:-$HERE/work}
BASE_UPDATES=${BASE_UPDATES:-3000}
MAX_UPDATE=${MAX_UPDATE:-600}
FROZEN_UPDATES=${FROZEN_UPDATES:-300}
METHODS=${METHODS:-full,static-half,hashee-enc,hashee-encdec,hashee-difficulty,calm,calm-classifier,dat,consistentee,leco,free,hashee-enc+static-dec,hashee-enc+calm}
TIMING_ROUNDS=${TIMING_ROUNDS:-3}
BEAM=${BEAM:-4}
CALIBRATE=${CALIBRATE-}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

source "$HERE/../sample/tiny.sh"
bash "$HERE/../sample/prepare.sh" "$WORK"
hashee-compare "$WORK/data-bin" --work-dir "$WORK/compare" --methods "$METHODS" --cpu --jobs 2 \
  --arch hashee_bart_base --model-args "$TINY_MODEL_ARGS" --train-args "$TINY_TRAIN_ARGS" \
  --base-updates "$BASE_UPDATES" --max-update "$MAX_UPDATE" --frozen-updates "$FROZEN_UPDATES" \
  --timing-rounds "$TIMING_ROUNDS" --generate-args "--beam $BEAM $TINY_GENERATE_ARGS" \
  ${CALIBRATE:+--calibrate "$CALIBRATE" --calibrate-loss drop} "${EXTRA[@]}"
