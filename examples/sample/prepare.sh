#!/usr/bin/env bash
# The built-in corpus, ready for fairseq: build the documentation summarization corpus from
# Python's standard library (hashee-sample-data; what it is and why: its module docstring),
# learn a sentencepiece vocabulary, encode and binarize train, valid, test and calib (the 1,000
# pairs calibration certifies a quality budget on; fairseq-preprocess names only train, valid and
# test, so calib is binarized as a test split with the same dictionary and renamed).
#
#   bash examples/sample/prepare.sh [WORK_DIR]      (default: examples/sample/work)
#
# Writes WORK_DIR/raw (text), WORK_DIR/spm (subwords, spm.model) and WORK_DIR/data-bin; a
# finished run leaves WORK_DIR/.data.done and is not redone. CALIB (environment, default 1000):
# the calib split's pairs.
set -euo pipefail

WORK=${1:-$(dirname "$0")/work}
RAW=$WORK/raw
SPM=$WORK/spm
BIN=$WORK/data-bin
[ -f "$WORK/.data.done" ] && exit 0
mkdir -p "$RAW" "$SPM"
# Importing fairseq logs that tensorboardX is missing, once per command: not worth a line each.
quiet() { "$@" 2> >(grep -v tensorboardX >&2); }
echo "== corpus and subwords"
quiet hashee-sample-data "$RAW" --calib "${CALIB:-1000}"
quiet hashee-spm train --input "$RAW/train.src" "$RAW/train.tgt" --model-prefix "$SPM/spm" --vocab-size 2000
for split in train valid test calib; do
  for side in src tgt; do
    quiet hashee-spm encode --model "$SPM/spm.model" < "$RAW/$split.$side" > "$SPM/$split.$side"
  done
done
rm -rf "$BIN" "$BIN.calib"
fairseq-preprocess --source-lang src --target-lang tgt \
  --trainpref "$SPM/train" --validpref "$SPM/valid" --testpref "$SPM/test" \
  --joined-dictionary --destdir "$BIN" --workers 2 2>&1 | grep -v tensorboardX | tail -n 2
fairseq-preprocess --source-lang src --target-lang tgt --testpref "$SPM/calib" --srcdict "$BIN/dict.src.txt" \
  --joined-dictionary --destdir "$BIN.calib" --workers 2 2>&1 | grep -v tensorboardX | tail -n 1
for file in "$BIN.calib"/test.src-tgt.*; do
  mv "$file" "$BIN/calib.${file##*/test.}"
done
rm -rf "$BIN.calib"
touch "$WORK/.data.done"
