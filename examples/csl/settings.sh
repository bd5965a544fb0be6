# CSL (abstract -> title) with HashEE CPT. Generation: at most 50 tokens, CPT's length for CSL
# (run_gen.py's val_max_target_length); CPT leaves the beam to the checkpoint's generation
# config, here beam 4 with no length penalty and no n-gram blocking.
DATASET=csl
source "$(dirname "${BASH_SOURCE[0]}")/../common/cpt.sh"
: "${BEAM:=4}" "${LENPEN:=1.0}" "${MAX_LEN_B:=50}" "${MIN_LEN:=1}" "${NO_REPEAT_NGRAM:=0}"
