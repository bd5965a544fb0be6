# CPT, fine-tuned with the settings of CPT's own generation fine-tuning (fastnlp/CPT,
# finetune/generation/run_gen.py on transformers' Seq2SeqTrainer): AdamW lr 2e-5 decaying
# linearly to 0 without warm-up, 50 examples per GPU, 5 epochs, sources cut to 512 positions,
# no label smoothing, weight decay 0, gradient norm clipped at 1.0; dropout as the checkpoint has it.
# BERT WordPiece with the checkpoint's vocab.txt; fairseq-preprocess with hashee-convert's dict.txt.
# PRETRAINED: hashee-convert's output (model.pt, dict.txt) with the checkpoint's vocab.txt copied in.
SUBWORDS=wordpiece
LANGUAGE=zh
: "${ARCH:=hashee_cpt_base}" "${MAX_POSITIONS:=512}"
: "${LR:=2e-05}" "${WARMUP_UPDATES:=0}" "${MAX_TOKENS:=}" "${BATCH_SIZE:=50}" "${MAX_EPOCH:=5}"
: "${LABEL_SMOOTHING:=0.0}" "${WEIGHT_DECAY:=0.0}" "${CLIP_NORM:=1.0}"
: "${DROPOUT:=}" "${ATTENTION_DROPOUT:=}"
: "${GPUS:=1}" "${UPDATE_FREQ:=1}"
