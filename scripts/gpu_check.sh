#!/usr/bin/env bash
# The GPU checks of the skip path, as one script for a lent GPU machine (docs/benchmark.md#on-a-gpu):
# the plugin's CUDA tests in fp16 and bf16, then hashee-benchmark on CUDA in fp16 at bart_base and
# bart_large. Figures go to $OUT (default ./gpu-results) as JSON and logs; each part has its own
# time limit, so a slow part leaves the others' figures; PARTS picks some of them (a lent GPU's
# time is short). Usage: [PARTS="tests base_encoder ..."] bash scripts/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-results}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
PARTS=${PARTS:-tests base_encoder base_generate base_fast large_encoder large_generate}
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
BENCH=("$PY" -m fairseq_hashee.cli.benchmark --device cuda --dtype fp16 --gen-repeats 2 --repeats 5)

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# CUDA cases of the exactness tests (skip == masked, incremental == teacher-forced, rules, FLOPs).
wanted tests && timeout 300 "$PY" -m pytest -q -p no:xdist -k cuda tests/test_incremental.py tests/test_skip_vs_masked.py \
    tests/test_exit_rules.py 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"

run() {  # NAME SECONDS ARGS...: one benchmark run, its JSON and its log
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    timeout "$limit" "${BENCH[@]}" --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? ($(grep -c MISS "$OUT/$name.log") MISS)"
}
CONFIGS=stock,no-exits,enc-exits,all-exits,half
run base_encoder 150 --skip generate --src-len 512,1024 --batch-size 1,8,64 --configs $CONFIGS
run base_generate 300 --skip encoder --gen-batch-size 1,8,32 --decoding forced --configs $CONFIGS
run base_fast 150 --skip encoder --gen-batch-size 1,8,32 --decoding forced --configs stock,all-exits \
    --decoder-exit-layers 1,2,3
run large_encoder 150 --arch hashee_bart_large --skip generate --src-len 512,1024 --batch-size 1,8,64 \
    --configs $CONFIGS
run large_generate 400 --arch hashee_bart_large --skip encoder --gen-batch-size 1,8,32 --decoding forced \
    --configs $CONFIGS
