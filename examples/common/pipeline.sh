# Sourced by every stage of the dataset pipelines (examples/DATASET/*.sh):
#   source pipeline.sh SETTINGS_FILE
# reads the dataset's settings, finds the plugin and defines the helpers the stages share.
# Knobs common to all stages (environment): PRETRAINED (the released checkpoint's folder:
# model.pt, dict.txt and its subword files), RUN (a name: several runs then share one WORK_DIR's
# data, each with its own checkpoints-RUN/ and generate-RUN/), CPU=1 (no GPU).

source "$1"
: "${PRETRAINED:=}" "${CPU:=0}" "${FP16:=1}" "${RUN:=}"
# Found without importing the package (which would load fairseq: seconds per stage).
USER_DIR=$(python -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('fairseq_hashee').origin))")

die() { echo "error: $*" >&2; exit 1; }

need_pretrained() {
  [ -n "$PRETRAINED" ] || die "set PRETRAINED to the released checkpoint's folder (model.pt, dict.txt, subword files)"
}

require_files() {
  local path
  for path in "$@"; do [ -f "$path" ] || die "$path: no such file"; done
}

# The subword files of $PRETRAINED, checked before any work starts.
subword_files() {
  case $SUBWORDS in
    gpt2) echo "$PRETRAINED/encoder.json" "$PRETRAINED/vocab.bpe" ;;
    wordpiece) echo "$PRETRAINED/vocab.txt" ;;
    *) die "SUBWORDS=$SUBWORDS: expected gpt2 or wordpiece" ;;
  esac
}

# subword_encode MAX_LEN --inputs FILES... --outputs FILES...: text files -> subword files.
subword_encode() {
  local max_len=$1; shift
  case $SUBWORDS in
    gpt2) hashee-gpt2-bpe --encoder-json "$PRETRAINED/encoder.json" --vocab-bpe "$PRETRAINED/vocab.bpe" \
            --workers "$WORKERS" --max-len "$max_len" "$@" ;;
    # "<s>" is [CLS] in hashee-convert's dictionary: a CPT sentence is [CLS] ... [SEP].
    wordpiece) hashee-wordpiece --vocab "$PRETRAINED/vocab.txt" --prepend "<s>" \
                 --workers "$WORKERS" --max-len "$max_len" "$@" ;;
  esac
}

# subword_decode: lines of subword symbols (stdin) -> text (stdout).
subword_decode() {
  case $SUBWORDS in
    gpt2) hashee-gpt2-bpe --encoder-json "$PRETRAINED/encoder.json" --vocab-bpe "$PRETRAINED/vocab.bpe" --decode ;;
    wordpiece) hashee-wordpiece --vocab "$PRETRAINED/vocab.txt" --decode ;;
  esac
}

# build_dir DIR FUNCTION: FUNCTION fills a temporary folder (its one argument) that is renamed
# to DIR only when FUNCTION succeeds, so a failure never leaves a half-written DIR behind;
# an existing DIR is kept (delete it to rebuild).
PARTIAL=
trap '[ -z "$PARTIAL" ] || rm -rf "$PARTIAL"' EXIT
build_dir() {
  local dir=$1 build=$2
  if [ -d "$dir" ]; then
    echo "kept $dir (delete it to rebuild)"
    return
  fi
  mkdir -p "$(dirname "$dir")"
  PARTIAL=$(mktemp -d "$dir.partial.XXXXXX")
  "$build" "$PARTIAL"
  mv "$PARTIAL" "$dir"
  PARTIAL=
}

# fairseq flags for the device: CPU=1, or GPUs with fp16 unless FP16=0.
device_flags() {
  if [ "$CPU" = 1 ]; then
    echo --cpu
  elif [ "$FP16" = 1 ]; then
    echo --fp16
  fi
}
