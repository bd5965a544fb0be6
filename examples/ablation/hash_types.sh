#!/usr/bin/env bash
# The paper's hash-function ablation on the built-in sample data: one tiny
# HashEE BART per hash type, same data, same settings, then one table of ROUGE
# and FLOPs speed-up per hash type (and the JSON it was made from).
#
#   bash examples/ablation/hash_types.sh [WORK_DIR]     (default: examples/ablation/work)
#
# Knobs (environment): HASH_TYPES (default: all five, "random random-incons
# frequency mi cluster"), MAX_UPDATE,
# DEC_EXITS (1/0); each run is examples/sample/hashee.sh with RUN=<hash type>.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-$HERE/work}
HASH_TYPES=${HASH_TYPES:-random random-incons frequency mi cluster}
export MAX_UPDATE=${MAX_UPDATE:-600} DEC_EXITS=${DEC_EXITS:-1}

for hash in $HASH_TYPES; do
  echo "==== hash type $hash"
  RUN=$hash ENC_HASH=$hash DEC_HASH=$hash bash "$HERE/../sample/hashee.sh" "$WORK" > "$WORK.$hash.log" 2>&1 \
    || { tail -n 20 "$WORK.$hash.log" >&2; exit 1; }
done

python - "$WORK" $HASH_TYPES <<'PY'
import json, re, sys
work, types = sys.argv[1], sys.argv[2:]
rows = []
for hash_type in types:
    rouge = json.load(open(f"{work}/generate-{hash_type}/rouge.json"))
    log = open(f"{work}/generate-{hash_type}/generate.log").read()
    speed = dict(re.findall(r"(encoder|decoder|total) (\d+\.\d+)x", log))
    rows.append({"hash": hash_type, **{k: round(v, 2) for k, v in rouge.items()},
                 **{f"speedup_{k}": float(v) for k, v in speed.items()}})
print(f"{'hash':<14}{'R-1':>7}{'R-2':>7}{'R-L':>7}{'enc x':>8}{'dec x':>8}{'total x':>9}")
for r in rows:
    print(f"{r['hash']:<14}{r['rouge1']:>7.2f}{r['rouge2']:>7.2f}{r['rougeL']:>7.2f}"
          f"{r['speedup_encoder']:>8.2f}{r['speedup_decoder']:>8.2f}{r['speedup_total']:>9.2f}")
with open(f"{work}/ablation.json", "w") as out:
    json.dump(rows, out, indent=2)
print(f"json: {work}/ablation.json")
PY
