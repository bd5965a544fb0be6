# CNN/DailyMail with HashEE BART. Training: fairseq's recipe for CNN/DM, 20,000 updates on
# 8 GPUs x update-freq 4. Generation: the recipe's CNN/DM settings (examples/bart/summarize.py):
# beam 4, length penalty 2.0, 55 to 140 tokens, no repeated trigrams.
DATASET=cnndm
source "$(dirname "${BASH_SOURCE[0]}")/../common/bart.sh"
: "${TOTAL_NUM_UPDATES:=20000}" "${GPUS_X_UPDATE_FREQ:=32}"
: "${BEAM:=4}" "${LENPEN:=2.0}" "${MAX_LEN_B:=140}" "${MIN_LEN:=55}" "${NO_REPEAT_NGRAM:=3}"
