"""Data: tokenizers, streaming corpora, genomics, synthetic tasks (training layer).

``registry.py`` maps ``data.kind`` to its data module; ``kinds.py`` registers the built-in ones
(``synthetic.py``, ``modules.py``). Readers: ``text.py``, ``fasta.py``, ``labelled.py``, over
``stream.py`` (sharded, shuffled, resumable streams), ``files.py`` (paths, gzip, lines) and
``cache.py`` (encoded corpora on disk). Left empty of imports on purpose: importing any
``ssm_train.data`` module must not load Lightning and every reader.
"""
