#!/usr/bin/env bash
# Stage 3 of a dataset pipeline: summarize the test split with fairseq-generate and detokenize.
#
#   PRETRAINED=DIR bash examples/DATASET/generate.sh WORK_DIR
#
# Writes WORK_DIR/generate/test.hyp (one summary per test document, in order, as text) and
# test.ref (the clean reference of each), plus fairseq-generate's output and log, whose last
# line is the HashEE speed-up report. The dataset's settings.sh holds the usual beam and length
# settings; knobs: BEAM, LENPEN, MAX_LEN_B, MIN_LEN, NO_REPEAT_NGRAM, CHECKPOINT
# (checkpoint_best.pt), GEN_BATCH_SIZE (32), CPU=1, FP16=0, EXTRA_GEN_ARGS.
set -euo pipefail
source "$(dirname "$0")/pipeline.sh" "$1"
WORK=${2:?usage: generate.sh WORK_DIR}
CKPT=$WORK/checkpoints${RUN:+-$RUN}
GEN=$WORK/generate${RUN:+-$RUN}
: "${CHECKPOINT:=checkpoint_best.pt}" "${GEN_BATCH_SIZE:=32}" "${EXTRA_GEN_ARGS:=}"
need_pretrained
require_files "$CKPT/$CHECKPOINT" $(subword_files)
mkdir -p "$GEN"

echo "== generate $DATASET test summaries: beam $BEAM, lenpen $LENPEN, max-len-b $MAX_LEN_B," \
  "min-len $MIN_LEN, no-repeat-ngram $NO_REPEAT_NGRAM"
fairseq-generate "$WORK/data-bin" --user-dir "$USER_DIR" --task hashee_summarization \
  --source-lang source --target-lang target --path "$CKPT/$CHECKPOINT" --gen-subset test \
  --beam "$BEAM" --lenpen "$LENPEN" --max-len-b "$MAX_LEN_B" --min-len "$MIN_LEN" \
  --no-repeat-ngram-size "$NO_REPEAT_NGRAM" --truncate-source \
  --max-source-positions "$MAX_POSITIONS" --max-target-positions "$MAX_POSITIONS" \
  --batch-size "$GEN_BATCH_SIZE" --skip-invalid-size-inputs-valid-test $(device_flags) $EXTRA_GEN_ARGS \
  > "$GEN/generate.out" 2> "$GEN/generate.log" || { tail -n 5 "$GEN/generate.log" >&2; exit 1; }

# Hypotheses in test order, each next to its reference, matched by sample id: a test
# document fairseq-generate skipped cannot shift the others.
grep '^H-' "$GEN/generate.out" | sed 's/^H-//' | sort -n -k1,1 > "$GEN/test.sorted" \
  || die "$GEN/generate.out: no hypotheses (see $GEN/generate.log)"
cut -f3 "$GEN/test.sorted" | subword_decode > "$GEN/test.hyp"
cut -f1 "$GEN/test.sorted" | awk 'NR == FNR { want[$1 + 1] = 1; next } FNR in want' - "$WORK/text/test.target" \
  > "$GEN/test.ref"
echo "summarized $(wc -l < "$GEN/test.hyp") of $(wc -l < "$WORK/text/test.target") test documents: $GEN/test.hyp"
grep -o "HashEE generation speed-up.*" "$GEN/generate.log" || true
