"""Training data: documents -> token cache -> packed fixed-length batches (issue 4, "Data").

    sources   ``iter_documents`` (embedded stdlib corpus, files, folders, JSONL, local HF datasets),
              ``split_documents`` (train/validation by a hash of each document's source)
    cache     ``build_tokenizer`` and ``TokenCache.build`` -> a memory-mapped ``TokenDataset``
    packing   ``PackedBatches``: (B, S) ``Batch``es with document starts, deterministic per step and rank

Typical use::

    train_docs, val_docs = split_documents(iter_documents(None))      # the embedded corpus
    tokenizer = build_tokenizer("byte")
    train = PackedBatches(TokenCache.build(train_docs, tokenizer), seq_len=512, batch_size=8)
    batch = train.batch(step=0)                                        # input_ids, labels (8, 512)
"""

from xlstm_torch.training.data.cache import TokenCache, TokenDataset, build_tokenizer, default_cache_dir
from xlstm_torch.training.data.packing import IGNORE_INDEX, Batch, PackedBatches
from xlstm_torch.training.data.sources import (
    STDLIB_SOURCE_PREFIX,
    DataError,
    DataWarning,
    Document,
    iter_documents,
    split_documents,
    stdlib_corpus_files,
)

__all__ = ["Document", "iter_documents", "stdlib_corpus_files", "split_documents", "build_tokenizer", "TokenCache",
           "TokenDataset", "PackedBatches", "Batch", "DataError", "DataWarning", "IGNORE_INDEX",
           "STDLIB_SOURCE_PREFIX", "default_cache_dir"]
