#!/usr/bin/env bash
# Stage 4 of a dataset pipeline: ROUGE-1/2/L F1 of WORK_DIR/generate/test.hyp against test.ref.
#
#   bash examples/DATASET/score.sh WORK_DIR
#
# English: rouge-score with stemming, plus ROUGE-Lsum over sentences; Chinese: by characters as
# CPT reports (ZH_UNIT=jieba scores jieba words). Scores also go to WORK_DIR/generate/rouge.json.
set -euo pipefail
source "$(dirname "$0")/pipeline.sh" "$1"
WORK=${2:?usage: score.sh WORK_DIR}
GEN=$WORK/generate${RUN:+-$RUN}
: "${ZH_UNIT:=char}"
require_files "$GEN/test.hyp" "$GEN/test.ref"

if [ "$LANGUAGE" = zh ]; then
  echo "== ROUGE ($DATASET, Chinese by $ZH_UNIT)"
else
  echo "== ROUGE ($DATASET, English, stemmed; ROUGE-Lsum over sentences)"
fi
hashee-rouge --hyp "$GEN/test.hyp" --ref "$GEN/test.ref" --lang "$LANGUAGE" --zh-unit "$ZH_UNIT" \
  --json "$GEN/rouge.json"
grep -o "speed-up (FLOPs).*" "$GEN/generate.log" || true
