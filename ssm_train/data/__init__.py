"""Data: tokenizers, streaming corpora, genomics, synthetic tasks (training layer)."""
