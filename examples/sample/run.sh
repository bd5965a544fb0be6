#!/usr/bin/env bash
# The main job on built-in data, on CPU: the documentation summarization corpus (prepare.sh),
# then hashee-compare trains a tiny full-depth BART from scratch and fine-tunes settings from it
# with the same updates and seed (full depth; static depth, the encoder at half and the decoder
# at each of STATIC_DEPTHS layers; HashEE encoder exits; HashEE encoder+decoder exits),
# summarizes the test split with fairseq-generate and prints ROUGE, FLOPs and wall-clock
# speed-ups in one table, with three test documents' summaries side by side. With
# CALIBRATE=DELTA[,EPSILON] (default 0.02: at most two ROUGE-L points lost on average, with
# probability 0.9) each method's fastest setting that Learn-then-Test certifies on the 1,000
# calib documents is marked * in the table (the signed ROUGE-L drop against full depth, WSR
# p-values); CALIBRATE= leaves it out.
#
#   bash examples/sample/run.sh [WORK_DIR]      (default: examples/sample/work)
#
# Knobs (environment): BASE_UPDATES, MAX_UPDATE, BEAM, METHODS (any of hashee-compare's, e.g.
# full,hashee-enc,calm), STATIC_DEPTHS, TIMING_ROUNDS, CALIBRATE. Rerunning resumes: finished
# runs are not redone.
set -euo pipefail

HERE=$(dirname "$0")
WORK=${1:-$HERE/work}
BASE_UPDATES=${BASE_UPDATES:-2600}
MAX_UPDATE=${MAX_UPDATE:-300}
BEAM=${BEAM:-4}
METHODS=${METHODS:-full,static-half,hashee-enc,hashee-encdec}
TIMING_ROUNDS=${TIMING_ROUNDS:-2}
STATIC_DEPTHS=${STATIC_DEPTHS:-4,3,2}
CALIBRATE=${CALIBRATE-0.02}
SWEEP=()
[[ ",$METHODS," == *,static-half,* ]] && SWEEP=(--sweep "static-half=$STATIC_DEPTHS")

source "$HERE/tiny.sh"
bash "$HERE/prepare.sh" "$WORK"
# Importing fairseq logs that tensorboardX is missing (an INFO line it turns on itself).
hashee-compare "$WORK/data-bin" --work-dir "$WORK/compare" --methods "$METHODS" --cpu --jobs 2 \
  --arch hashee_bart_base --model-args "$TINY_MODEL_ARGS" --train-args "$TINY_TRAIN_ARGS" \
  --base-updates "$BASE_UPDATES" --max-update "$MAX_UPDATE" --timing-rounds "$TIMING_ROUNDS" \
  --generate-args "--beam $BEAM $TINY_GENERATE_ARGS" "${SWEEP[@]}" \
  ${CALIBRATE:+--calibrate "$CALIBRATE" --calibrate-loss drop} \
  2> >(grep -v tensorboardX >&2)
