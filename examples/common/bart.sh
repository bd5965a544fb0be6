# English BART, fine-tuned as fairseq's BART summarization recipe does
# (fairseq examples/bart/README.summarization.md): GPT-2 BPE with the encoder.json and vocab.bpe
# released with BART, fairseq-preprocess with BART's dict.txt, then Adam (0.9, 0.999) eps 1e-8,
# lr 3e-5 decaying polynomially after 500 warm-up updates, label smoothing 0.1, dropout and
# attention dropout 0.1, weight decay 0.01, clip-norm 0.1, 2048 tokens per GPU, fp16.
# PRETRAINED: bart.large/ (model.pt, dict.txt) with encoder.json and vocab.bpe put next to them.
SUBWORDS=gpt2
LANGUAGE=en
: "${ARCH:=hashee_bart_large}" "${MAX_POSITIONS:=1024}"
: "${LR:=3e-05}" "${WARMUP_UPDATES:=500}" "${MAX_TOKENS:=2048}" "${BATCH_SIZE:=}"
: "${LABEL_SMOOTHING:=0.1}" "${WEIGHT_DECAY:=0.01}" "${CLIP_NORM:=0.1}"
: "${DROPOUT:=0.1}" "${ATTENTION_DROPOUT:=0.1}"
: "${GPUS:=8}"
