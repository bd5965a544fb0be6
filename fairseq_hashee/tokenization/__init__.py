"""Tokenizers for models whose vocabulary comes from elsewhere (CPT's BERT vocab.txt)."""

from .wordpiece import WordPieceTokenizer

__all__ = ["WordPieceTokenizer"]
