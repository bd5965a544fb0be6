#!/usr/bin/env bash
# Stage 1 of a dataset pipeline: the raw public release -> clean text -> subwords -> binarized data.
#
#   PRETRAINED=DIR bash examples/DATASET/prepare.sh RAW_DIR WORK_DIR
#
# WORK_DIR/text: {train,valid,test}.{source,target} and prepare.json (hashee-prepare: counts,
#   skipped entries by reason);
# WORK_DIR/subwords: the same lines as subword symbols, each cut to MAX_POSITIONS - 1 symbols
#   (fairseq-preprocess adds </s>), counted per file;
# WORK_DIR/data-bin: fairseq-preprocess with the checkpoint's dict.txt.
# Each folder is built under a temporary name and renamed when complete: a failure leaves no
# half-written output, and a rerun keeps the folders already built.
# Knobs (environment): FORMAT (hashee-prepare's reader; default the dataset's, "lines" for data
# already split into {train,valid,test}.{source,target}), PREPARE_ARGS (e.g. "--seed 2"),
# WORKERS (encoding and binarizing processes, default 4), MAX_POSITIONS (the model's).
set -euo pipefail
source "$(dirname "$0")/pipeline.sh" "$1"
RAW=${2:?usage: prepare.sh RAW_DIR WORK_DIR}
WORK=${3:?usage: prepare.sh RAW_DIR WORK_DIR}
: "${FORMAT:=$DATASET}" "${PREPARE_ARGS:=}" "${WORKERS:=4}"
need_pretrained
require_files "$PRETRAINED/dict.txt" $(subword_files)

clean_text() {
  hashee-prepare "$FORMAT" "$RAW" "$1" --force $PREPARE_ARGS
}

encode_subwords() {
  local inputs=() outputs=() split side
  for split in train valid test; do
    for side in source target; do
      inputs+=("$WORK/text/$split.$side")
      outputs+=("$1/$split.$side")
    done
  done
  subword_encode $((MAX_POSITIONS - 1)) --inputs "${inputs[@]}" --outputs "${outputs[@]}"
}

binarize() {
  fairseq-preprocess --source-lang source --target-lang target \
    --trainpref "$WORK/subwords/train" --validpref "$WORK/subwords/valid" --testpref "$WORK/subwords/test" \
    --srcdict "$PRETRAINED/dict.txt" --tgtdict "$PRETRAINED/dict.txt" --destdir "$1" --workers "$WORKERS" \
    > "$1/fairseq-preprocess.out" 2>&1 || { tail -n 5 "$1/fairseq-preprocess.out" >&2; exit 1; }
  grep -o "\[[a-z]*\] .*sents.*replaced.*" "$1/preprocess.log" || true
}

echo "== 1/3 $DATASET: clean text ($FORMAT reader)"
build_dir "$WORK/text" clean_text
echo "== 2/3 subwords ($SUBWORDS, at most $((MAX_POSITIONS - 1)) a line)"
build_dir "$WORK/subwords" encode_subwords
echo "== 3/3 binarize with $PRETRAINED/dict.txt"
build_dir "$WORK/data-bin" binarize
echo "data: $WORK/data-bin"
