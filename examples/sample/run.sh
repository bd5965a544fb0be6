#!/usr/bin/env bash
# The main job on built-in data, start to end, on CPU: build a docstring
# summarization corpus from Python's standard library, learn a sentencepiece
# vocabulary, binarize, train a tiny HashEE BART from scratch, generate test
# summaries with fairseq-generate, score ROUGE and print the speed-up report.
#
#   bash examples/sample/run.sh [WORK_DIR]      (default: examples/sample/work)
#
# Knobs (environment): MAX_UPDATE, ENC_HASH, DEC_HASH, DEC_EXITS (1/0), BEAM, and
# RUN (a name: several runs then share WORK_DIR's data, each with its own
# checkpoints-RUN/ and generate-RUN/); DATA_ONLY=1 stops after the data (other
# examples, e.g. consistentee.sh, build their data with it).
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
mkdir -p "$RAW" "$SPM" "$BIN" "$CKPT" "$GEN"
# A finished stage leaves a marker; rerunning resumes after the last one.
done_stage() { [ -f "$WORK/.$1.done" ]; }
mark_stage() { touch "$WORK/.$1.done"; }

if ! done_stage data; then
  echo "== 1/5 corpus and subwords"
  hashee-sample-data "$RAW"
  hashee-spm train --input "$RAW/train.src" "$RAW/train.tgt" --model-prefix "$SPM/spm" --vocab-size 2000
  for split in train valid test; do
    for side in src tgt; do
      hashee-spm encode --model "$SPM/spm.model" < "$RAW/$split.$side" > "$SPM/$split.$side"
    done
  done
  rm -rf "$BIN"
  fairseq-preprocess --source-lang src --target-lang tgt \
    --trainpref "$SPM/train" --validpref "$SPM/valid" --testpref "$SPM/test" \
    --joined-dictionary --destdir "$BIN" --workers 2 2>&1 | grep -v tensorboardX | tail -n 2
  mark_stage data
fi
[ "${DATA_ONLY:-0}" = 1 ] && exit 0

EXIT_FLAGS=(--encoder-hash-type "$ENC_HASH" --decoder-hash-type "$DEC_HASH")
[ "$DEC_EXITS" = 1 ] && EXIT_FLAGS+=(--decoder-exits)

if ! done_stage "train${RUN:+-$RUN}"; then
  echo "== 2/5 train a tiny HashEE BART ($MAX_UPDATE updates, encoder hash $ENC_HASH, decoder exits $DEC_EXITS)"
  fairseq-train "$BIN" --user-dir "$USER_DIR" --task hashee_summarization \
    --source-lang src --target-lang tgt "${EXIT_FLAGS[@]}" \
    --arch hashee_bart_base --encoder-layers 4 --decoder-layers 4 \
    --encoder-embed-dim 128 --encoder-ffn-embed-dim 512 --encoder-attention-heads 4 \
    --decoder-embed-dim 128 --decoder-ffn-embed-dim 512 --decoder-attention-heads 4 \
    --max-source-positions 256 --max-target-positions 256 --truncate-source \
    --skip-invalid-size-inputs-valid-test \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 \
    --dropout 0.1 --max-tokens 4096 --max-update "$MAX_UPDATE" \
    --save-dir "$CKPT" --no-epoch-checkpoints --log-format simple --log-interval 100 \
    --cpu --num-workers 0 --seed 1 2>&1 | grep -E "valid on|done training|exit table|Error|error" || true
  [ -f "$CKPT/checkpoint_best.pt" ] || { echo "training produced no checkpoint" >&2; exit 1; }
  mark_stage "train${RUN:+-$RUN}"
fi

echo "== 3/5 generate test summaries (beam $BEAM)"
fairseq-generate "$BIN" --user-dir "$USER_DIR" --task hashee_summarization \
  --source-lang src --target-lang tgt --path "$CKPT/checkpoint_best.pt" --gen-subset test \
  --beam "$BEAM" --max-len-b 48 --batch-size 32 --truncate-source --max-source-positions 256 --max-target-positions 256 --skip-invalid-size-inputs-valid-test \
  --post-process sentencepiece --cpu \
  > "$GEN/generate.out" 2> "$GEN/generate.log"
# Hypotheses in test order, each with its raw reference (matched by sample id,
# so a test pair fairseq-generate had to skip cannot shift the others).
grep '^D-' "$GEN/generate.out" | sed 's/^D-//' | sort -n -k1,1 > "$GEN/test.sorted"
cut -f3 "$GEN/test.sorted" > "$GEN/test.hyp"
cut -f1 "$GEN/test.sorted" | awk 'NR == FNR { want[$1 + 1] = 1; next } FNR in want' - "$RAW/test.tgt" > "$GEN/test.ref"
grep -v tensorboardX "$GEN/generate.log" | grep -E "HashEE generation|Translated" || true

echo "== 4/5 ROUGE"
hashee-rouge --hyp "$GEN/test.hyp" --ref "$GEN/test.ref" --json "$GEN/rouge.json"

echo "== 5/5 speed-up"
grep -o "speed-up (FLOPs).*" "$GEN/generate.log"
echo "summaries: $GEN/test.hyp, references: $GEN/test.ref"
