#!/usr/bin/env bash
# One tiny HashEE BART on built-in data, start to end, on CPU: the corpus (prepare.sh), training
# from scratch, test summaries with fairseq-generate, ROUGE and the FLOPs speed-up report.
# (The main job, run.sh, compares HashEE with full and half depth; this is one model alone.)
#
#   bash examples/sample/hashee.sh [WORK_DIR]      (default: examples/sample/work)
#
# Knobs (environment): MAX_UPDATE, ENC_HASH, DEC_HASH, DEC_EXITS (1/0), BEAM, and
# RUN (a name: several runs then share WORK_DIR's data, each with its own
# checkpoints-RUN/ and generate-RUN/); examples/ablation/hash_types.sh runs one per hash type.
set -euo pipefail

WORK=${1:-$(dirname "$0")/work}
MAX_UPDATE=${MAX_UPDATE:-600}
ENC_HASH=${ENC_HASH:-frequency}
DEC_HASH=${DEC_HASH:-frequency}
DEC_EXITS=${DEC_EXITS:-1}
BEAM=${BEAM:-4}
USER_DIR=$(python -c "import os, fairseq_hashee; print(os.path.dirname(fairseq_hashee.__file__))" 2>/dev/null)

RAW=$WORK/raw
SPM=$WORK/spm
BIN=$WORK/data-bin
CKPT=$WORK/checkpoints${RUN:+-$RUN}
GEN=$WORK/generate${RUN:+-$RUN}
mkdir -p "$CKPT" "$GEN"
# A finished stage leaves a marker; rerunning resumes after the last one.
done_stage() { [ -f "$WORK/.$1.done" ]; }
mark_stage() { touch "$WORK/.$1.done"; }

source "$(dirname "$0")/tiny.sh"
bash "$(dirname "$0")/prepare.sh" "$WORK"

EXIT_FLAGS=(--encoder-hash-type "$ENC_HASH" --decoder-hash-type "$DEC_HASH")
[ "$DEC_EXITS" = 1 ] && EXIT_FLAGS+=(--decoder-exits)

if ! done_stage "train${RUN:+-$RUN}"; then
  echo "== 1/4 train a tiny HashEE BART ($MAX_UPDATE updates, encoder hash $ENC_HASH, decoder exits $DEC_EXITS)"
  # shellcheck disable=SC2086  (the option strings of tiny.sh split into words)
  fairseq-train "$BIN" --user-dir "$USER_DIR" --task hashee_summarization \
    --source-lang src --target-lang tgt "${EXIT_FLAGS[@]}" --arch hashee_bart_base $TINY_MODEL_ARGS \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 $TINY_TRAIN_ARGS --max-update "$MAX_UPDATE" \
    --save-dir "$CKPT" --no-epoch-checkpoints --log-format simple --log-interval 100 \
    --cpu --seed 1 2>&1 | grep -E "valid on|done training|exit table|Error|error" || true
  [ -f "$CKPT/checkpoint_best.pt" ] || { echo "training produced no checkpoint" >&2; exit 1; }
  mark_stage "train${RUN:+-$RUN}"
fi

echo "== 2/4 generate test summaries (beam $BEAM)"
fairseq-generate "$BIN" --user-dir "$USER_DIR" --task hashee_summarization \
  --source-lang src --target-lang tgt --path "$CKPT/checkpoint_best.pt" --gen-subset test \
  --beam "$BEAM" $TINY_GENERATE_ARGS --cpu \
  > "$GEN/generate.out" 2> "$GEN/generate.log"
# Hypotheses in test order, each with its raw reference (matched by sample id,
# so a test pair fairseq-generate had to skip cannot shift the others).
grep '^D-' "$GEN/generate.out" | sed 's/^D-//' | sort -n -k1,1 > "$GEN/test.sorted"
cut -f3 "$GEN/test.sorted" > "$GEN/test.hyp"
cut -f1 "$GEN/test.sorted" | awk 'NR == FNR { want[$1 + 1] = 1; next } FNR in want' - "$RAW/test.tgt" > "$GEN/test.ref"
grep -v tensorboardX "$GEN/generate.log" | grep -E "HashEE generation|Translated" || true

echo "== 3/4 ROUGE"
hashee-rouge --hyp "$GEN/test.hyp" --ref "$GEN/test.ref" --json "$GEN/rouge.json"

echo "== 4/4 speed-up"
grep -o "speed-up (FLOPs).*" "$GEN/generate.log"
echo "summaries: $GEN/test.hyp, references: $GEN/test.ref"
