# Reddit TIFU-long with HashEE BART. Its summaries are short and abstractive like XSum's, so
# training and generation take the recipe's XSum settings: 15,000 updates on 8 GPUs x
# update-freq 2; beam 6, length penalty 1.0, 10 to 60 tokens, no repeated trigrams
# (examples/bart/README.summarization.md and summarize.py).
DATASET=reddit
source "$(dirname "${BASH_SOURCE[0]}")/../common/bart.sh"
: "${TOTAL_NUM_UPDATES:=15000}" "${GPUS_X_UPDATE_FREQ:=16}"
: "${BEAM:=6}" "${LENPEN:=1.0}" "${MAX_LEN_B:=60}" "${MIN_LEN:=10}" "${NO_REPEAT_NGRAM:=3}"
