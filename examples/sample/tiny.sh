# Sourced by the built-in-corpus examples: the tiny BART they train on CPU and how.
# 4+4 layers of width 128; sources are at most 32 words (hashee-sample-data), far below 256 positions.
TINY_MODEL_ARGS="--encoder-layers 4 --decoder-layers 4 \
--encoder-embed-dim 128 --encoder-ffn-embed-dim 512 --encoder-attention-heads 4 \
--decoder-embed-dim 128 --decoder-ffn-embed-dim 512 --decoder-attention-heads 4 \
--max-source-positions 256 --max-target-positions 256 --weight-init transformer"
TINY_TRAIN_ARGS="--optimizer adam --adam-betas (0.9,0.98) --lr 1e-3 --lr-scheduler inverse_sqrt \
--warmup-updates 100 --dropout 0 --max-tokens 1024 --truncate-source --skip-invalid-size-inputs-valid-test \
--num-workers 0"
TINY_GENERATE_ARGS="--max-len-b 48 --batch-size 32 --truncate-source --max-source-positions 256 \
--max-target-positions 256 --skip-invalid-size-inputs-valid-test --post-process sentencepiece"
