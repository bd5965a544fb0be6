#!/usr/bin/env bash
# ConsistentEE on built-in data, on CPU (docs/exit-methods.md, "ConsistentEE"):
# stage 1 trains a tiny HashEE BART with every decoder layer's loss (multi-exit;
# without the rule, whose untrained policies would exit positions in validation),
# stage 2 trains the exit policies alone by REINFORCE (backbone frozen), then
# test summaries are generated at full depth and with the policies at several
# thresholds, each scored with ROUGE and its FLOPs speed-up.
#
#   bash examples/sample/consistentee.sh [WORK_DIR]   (default: examples/sample/work)
#
# The data are run.sh's (built here if WORK_DIR has none). Knobs (environment):
# STAGE1_UPDATES (600), STAGE2_UPDATES (200), ALPHA (0.05), SAMPLES (4),
# THRESHOLDS ("0.3 0.5 0.7"), BEAM (4), RUN (a name for the checkpoints and outputs).
set -euo pipefail

HERE=$(dirname "$0")
WORK=${1:-$HERE/work}
STAGE1_UPDATES=${STAGE1_UPDATES:-600}
STAGE2_UPDATES=${STAGE2_UPDATES:-200}
ALPHA=${ALPHA:-0.05}
SAMPLES=${SAMPLES:-4}
THRESHOLDS=${THRESHOLDS:-0.3 0.5 0.7}
BEAM=${BEAM:-4}
USER_DIR=$(python -c "import os, fairseq_hashee; print(os.path.dirname(fairseq_hashee.__file__))" 2>/dev/null)

DATA_ONLY=1 bash "$HERE/run.sh" "$WORK"
RAW=$WORK/raw
BIN=$WORK/data-bin
OUT=$WORK/consistentee${RUN:+-$RUN}
mkdir -p "$OUT"

COMMON=("$BIN" --user-dir "$USER_DIR" --task hashee_summarization --source-lang src --target-lang tgt
  --arch hashee_bart_base --encoder-layers 4 --decoder-layers 4
  --encoder-embed-dim 128 --encoder-ffn-embed-dim 512 --encoder-attention-heads 4
  --decoder-embed-dim 128 --decoder-ffn-embed-dim 512 --decoder-attention-heads 4
  --max-source-positions 256 --max-target-positions 256 --truncate-source --skip-invalid-size-inputs-valid-test
  --encoder-hash-type frequency
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr-scheduler inverse_sqrt
  --max-tokens 4096 --no-epoch-checkpoints --log-format simple --log-interval 50
  --cpu --num-workers 0 --seed 1)
show() { tee -a "$OUT/train.log" | grep -E "valid on|done training|error" || true; }  # the whole log: train.log

if [ ! -f "$OUT/stage1/checkpoint_best.pt" ]; then
  echo "== stage 1: backbone and exit heads, every layer's loss ($STAGE1_UPDATES updates)"
  fairseq-train "${COMMON[@]}" --criterion multi_exit_label_smoothed_cross_entropy --label-smoothing 0.1 \
    --lr 1e-3 --warmup-updates 200 --dropout 0.1 --max-update "$STAGE1_UPDATES" --save-dir "$OUT/stage1" 2>&1 | show
fi
if [ ! -f "$OUT/stage2/checkpoint_best.pt" ]; then
  echo "== stage 2: the exit policies by REINFORCE ($STAGE2_UPDATES updates, alpha $ALPHA, K $SAMPLES)"
  fairseq-train "${COMMON[@]}" --decoder-exit-rule consistentee --restore-file "$OUT/stage1/checkpoint_best.pt" \
    --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler \
    --criterion consistentee_policy --consistentee-alpha "$ALPHA" --consistentee-samples "$SAMPLES" \
    --lr 3e-4 --warmup-updates 20 --max-update "$STAGE2_UPDATES" --save-dir "$OUT/stage2" 2>&1 | show
fi

generate() {  # NAME, then fairseq-generate options
  local name=$1 dir=$OUT/generate-$1
  shift
  mkdir -p "$dir"
  fairseq-generate "$BIN" --user-dir "$USER_DIR" --task hashee_summarization --source-lang src --target-lang tgt \
    --path "$OUT/stage2/checkpoint_best.pt" --gen-subset test --beam "$BEAM" --max-len-b 48 --batch-size 32 \
    --truncate-source --max-source-positions 256 --max-target-positions 256 --skip-invalid-size-inputs-valid-test \
    --post-process sentencepiece --cpu "$@" > "$dir/generate.out" 2> "$dir/generate.log"
  grep '^D-' "$dir/generate.out" | sed 's/^D-//' | sort -n -k1,1 > "$dir/test.sorted"
  cut -f3 "$dir/test.sorted" > "$dir/test.hyp"
  cut -f1 "$dir/test.sorted" | awk 'NR == FNR { want[$1 + 1] = 1; next } FNR in want' - "$RAW/test.tgt" > "$dir/test.ref"
  echo "== $name: $(grep -o "speed-up (FLOPs).*" "$dir/generate.log"); wall $(grep -o "in [0-9.]*s ([0-9.]* sentences/s" "$dir/generate.log")"
  hashee-rouge --hyp "$dir/test.hyp" --ref "$dir/test.ref" --json "$dir/rouge.json"
}

generate full-depth --model-overrides "{'decoder_exit_rule': 'none'}"
for threshold in $THRESHOLDS; do
  generate "threshold-$threshold" --exit-threshold "$threshold"
done
