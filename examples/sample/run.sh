#!/usr/bin/env bash
# The main job on built-in data, on CPU: the documentation summarization corpus (prepare.sh),
# then hashee-compare trains a tiny full-depth BART from scratch and fine-tunes four settings
# from it with the same updates and seed (full depth, static half depth, HashEE encoder exits,
# HashEE encoder+decoder exits), summarizes the test split with fairseq-generate and prints
# ROUGE, FLOPs and wall-clock speed-ups in one table, with three test documents' summaries side
# by side. With CALIBRATE=DELTA[,EPSILON] (default 0.2) every method but full depth also gets the
# row Learn-then-Test certifies on the valid split to lose at most DELTA of full depth's ROUGE-L
# (with probability 1 - EPSILON, default 0.1); CALIBRATE= leaves it out.
#
#   bash examples/sample/run.sh [WORK_DIR]      (default: examples/sample/work)
#
# Knobs (environment): BASE_UPDATES, MAX_UPDATE, BEAM, METHODS (any of hashee-compare's, e.g.
# full,hashee-enc,calm), TIMING_ROUNDS, CALIBRATE. Rerunning resumes: finished runs are not redone.
set -euo pipefail

HERE=$(dirname "$0")
WORK=${1:-$HERE/work}
BASE_UPDATES=${BASE_UPDATES:-2600}
MAX_UPDATE=${MAX_UPDATE:-300}
BEAM=${BEAM:-4}
METHODS=${METHODS:-full,static-half,hashee-enc,hashee-encdec}
TIMING_ROUNDS=${TIMING_ROUNDS:-2}
CALIBRATE=${CALIBRATE-0.2}

source "$HERE/tiny.sh"
bash "$HERE/prepare.sh" "$WORK"
# Importing fairseq logs that tensorboardX is missing (an INFO line it turns on itself).
hashee-compare "$WORK/data-bin" --work-dir "$WORK/compare" --methods "$METHODS" --cpu --jobs 2 \
  --arch hashee_bart_base --model-args "$TINY_MODEL_ARGS" --train-args "$TINY_TRAIN_ARGS" \
  --base-updates "$BASE_UPDATES" --max-update "$MAX_UPDATE" --timing-rounds "$TIMING_ROUNDS" \
  --generate-args "--beam $BEAM $TINY_GENERATE_ARGS" ${CALIBRATE:+--calibrate "$CALIBRATE"} \
  2> >(grep -v tensorboardX >&2)
