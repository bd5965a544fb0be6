"""Released Hugging Face CPT and BART checkpoints -> fairseq checkpoints of the HashEE models."""
