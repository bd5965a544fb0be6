# TTNews (NLPCC 2017) with HashEE CPT. Generation: NLPCC 2017 limits summaries to 60 characters
# (about as many WordPiece tokens; 64 leaves room for [CLS] and numbers); beam 4 as for CSL.
DATASET=ttnews
source "$(dirname "${BASH_SOURCE[0]}")/../common/cpt.sh"
: "${BEAM:=4}" "${LENPEN:=1.0}" "${MAX_LEN_B:=64}" "${MIN_LEN:=1}" "${NO_REPEAT_NGRAM:=0}"
