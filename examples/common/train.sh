#!/usr/bin/env bash
# Stage 2 of a dataset pipeline: fine-tune HashEE BART / CPT from the released checkpoint.
#
#   PRETRAINED=DIR bash examples/DATASET/train.sh WORK_DIR
#
# Trains on WORK_DIR/data-bin into WORK_DIR/checkpoints; rerun it to resume from
# checkpoint_last.pt. The dataset's settings.sh holds the paper's recipe; every value is a knob:
#   ENC_HASH (frequency) / DEC_HASH (frequency): hash types (random, random-incons, frequency, mi, cluster)
#   ENC_EXIT_LAYERS / DEC_EXIT_LAYERS: the exit layers (buckets) a hash may assign, e.g. 1,2,4
#     (default: every layer)
#   DEC_EXITS: 1 lets decoder tokens exit too (default 0, the paper's summarization setting)
#   GPUS: GPUs on this machine; UPDATE_FREQ keeps the recipe's GPUS x UPDATE_FREQ unless set
#   RESTORE: checkpoint to start from (default $PRETRAINED/model.pt; empty: from scratch)
#   ARCH, ARCH_ARGS (e.g. smaller dimensions), MAX_UPDATE, TOTAL_NUM_UPDATES, LR, WARMUP_UPDATES,
#   MAX_TOKENS or BATCH_SIZE, CPU=1, FP16=0, EXTRA_ARGS (any other fairseq-train flags)
set -euo pipefail
source "$(dirname "$0")/pipeline.sh" "$1"
WORK=${2:?usage: train.sh WORK_DIR}
BIN=$WORK/data-bin
CKPT=$WORK/checkpoints${RUN:+-$RUN}
[ -d "$BIN" ] || die "$BIN: no binarized data; run prepare.sh first"
: "${ENC_HASH:=frequency}" "${DEC_HASH:=frequency}" "${DEC_EXITS:=0}"
: "${ENC_EXIT_LAYERS:=}" "${DEC_EXIT_LAYERS:=}" "${ARCH_ARGS:=}" "${EXTRA_ARGS:=}"
if [ -z "${RESTORE+set}" ]; then
  need_pretrained
  RESTORE=$PRETRAINED/model.pt
fi
[ -z "$RESTORE" ] || require_files "$RESTORE"
[ "$CPU" = 1 ] && GPUS=1
# Unless set, UPDATE_FREQ keeps the recipe's batch: GPUS x UPDATE_FREQ = GPUS_X_UPDATE_FREQ.
: "${UPDATE_FREQ:=$(( (GPUS_X_UPDATE_FREQ + GPUS - 1) / GPUS ))}"
if [ -z "${TOTAL_NUM_UPDATES:-}" ]; then
  # A recipe counted in epochs of BATCH_SIZE examples per GPU (CPT's): its number of updates.
  examples=$(wc -l < "$WORK/text/train.source")
  per_update=$((BATCH_SIZE * GPUS * UPDATE_FREQ))
  TOTAL_NUM_UPDATES=$(( (examples + per_update - 1) / per_update * MAX_EPOCH ))
fi
: "${MAX_UPDATE:=$TOTAL_NUM_UPDATES}"

exits=(--encoder-hash-type "$ENC_HASH")
[ -z "$ENC_EXIT_LAYERS" ] || exits+=(--encoder-exit-layers "$ENC_EXIT_LAYERS")
if [ "$DEC_EXITS" = 1 ]; then
  exits+=(--decoder-exits --decoder-hash-type "$DEC_HASH")
  [ -z "$DEC_EXIT_LAYERS" ] || exits+=(--decoder-exit-layers "$DEC_EXIT_LAYERS")
fi
start=()
[ -z "$RESTORE" ] || start=(--finetune-from-model "$RESTORE")
batch=()
[ -z "$MAX_TOKENS" ] || batch+=(--max-tokens "$MAX_TOKENS")
[ -z "$BATCH_SIZE" ] || batch+=(--batch-size "$BATCH_SIZE")
regularize=()
[ -z "$DROPOUT" ] || regularize+=(--dropout "$DROPOUT")
[ -z "$ATTENTION_DROPOUT" ] || regularize+=(--attention-dropout "$ATTENTION_DROPOUT")
parallel=()
[ "$GPUS" -le 1 ] || parallel=(--distributed-world-size "$GPUS" --find-unused-parameters)

echo "== train $ARCH on $DATASET (${RESTORE:-from scratch}): encoder hash $ENC_HASH" \
  "${ENC_EXIT_LAYERS:+exits $ENC_EXIT_LAYERS }decoder exits $DEC_EXITS, $GPUS GPU(s) x update-freq $UPDATE_FREQ," \
  "$MAX_UPDATE updates"
fairseq-train "$BIN" --user-dir "$USER_DIR" --task hashee_summarization \
  --source-lang source --target-lang target --truncate-source \
  --max-source-positions "$MAX_POSITIONS" --max-target-positions "$MAX_POSITIONS" \
  --arch "$ARCH" "${start[@]}" "${exits[@]}" \
  --criterion label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING" \
  --optimizer adam --adam-betas "(0.9, 0.999)" --adam-eps 1e-08 --weight-decay "$WEIGHT_DECAY" \
  --clip-norm "$CLIP_NORM" "${regularize[@]}" \
  --lr "$LR" --lr-scheduler polynomial_decay --warmup-updates "$WARMUP_UPDATES" \
  --total-num-update "$TOTAL_NUM_UPDATES" --max-update "$MAX_UPDATE" \
  "${batch[@]}" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1 \
  --skip-invalid-size-inputs-valid-test --save-dir "$CKPT" --no-epoch-checkpoints \
  "${parallel[@]}" $(device_flags) $ARCH_ARGS $EXTRA_ARGS
[ -f "$CKPT/checkpoint_best.pt" ] || die "training wrote no $CKPT/checkpoint_best.pt"
echo "checkpoints: $CKPT"
