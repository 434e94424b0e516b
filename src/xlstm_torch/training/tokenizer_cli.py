"""``xlstm tokenizer train --data PATH... --vocab-size N --out DIR``: a byte-level BPE trained locally.

Byte-pair encoding (the subword scheme of the xLSTM 7B tokenizer, Beck et al., 2025) learned with the
optional Hugging Face ``tokenizers`` package. The pre-tokenizer maps every UTF-8 byte to a symbol of
its 256-symbol alphabet first, so any text encodes and decodes back exactly, whatever was trained on.
The result is one ``tokenizer.json``, usable as ``build_tokenizer(DIR)`` or next to a checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from xlstm_torch.tokenizers import TOKENIZER_NAME

_MIN_VOCAB = 256  # the byte alphabet itself


def train_bpe(texts, vocab_size: int, *, min_frequency: int = 2, num_texts: int | None = None):
    """A byte-level BPE ``tokenizers.Tokenizer`` with at most ``vocab_size`` ids learned from ``texts``."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise ImportError("training a tokenizer needs the 'tokenizers' package: pip install tokenizers") from None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be an int >= {_MIN_VOCAB} (the byte alphabet), got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer, length=num_texts)
    return tokenizer


def run_train(args) -> int:
    from xlstm_torch.training.checkpointing import atomic_write_text
    from xlstm_torch.training.data import DataError, iter_documents

    out = Path(args.out)
    target = out / TOKENIZER_NAME
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file, not a folder")
        if target.exists() and not args.force:
            raise ValueError(f"{str(target)!r} already exists; pass --force to overwrite it")
        if args.vocab_size < _MIN_VOCAB:
            raise ValueError(f"--vocab-size must be >= {_MIN_VOCAB} (the byte alphabet), got {args.vocab_size}")
        start = time.perf_counter()
        docs = list(iter_documents(args.data, text_field=args.text_field))
        tokenizer = train_bpe((d.text for d in docs), args.vocab_size, min_frequency=args.min_frequency,
                              num_texts=len(docs))
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, tokenizer.to_str())
    except (DataError, ValueError, TypeError, ImportError, OSError) as err:
        print(f"xlstm tokenizer train: error: {err}", file=sys.stderr)
        return 2
    num_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    print(f"wrote {target}: vocab {tokenizer.get_vocab_size()} from {len(docs)} documents "
          f"({num_bytes / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on local text",
                       description="Tokenizer tools. 'xlstm tokenizer train' learns a byte-level BPE "
                                   "(Hugging Face 'tokenizers' package) and writes DIR/tokenizer.json.")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    actions = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = actions.add_parser("train", help="learn a BPE vocabulary from text files, folders or JSONL",
                           description="Learn a byte-level BPE (any text round-trips) and write DIR/tokenizer.json "
                                       "atomically. Use it with the trainer's tokenizer setting or "
                                       "xlstm_torch.training.data.build_tokenizer(DIR).")
    t.add_argument("--data", nargs="+", metavar="PATH", default=None,
                   help="text files, folders, .jsonl files or saved HF datasets (default: the embedded "
                        "standard-library corpus)")
    t.add_argument("--vocab-size", type=int, required=True, help=f"number of ids, >= {_MIN_VOCAB}")
    t.add_argument("--out", required=True, metavar="DIR", help="folder to write tokenizer.json into")
    t.add_argument("--text-field", default="text", help="field of a JSONL record / dataset column (default text)")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen this often (default 2)")
    t.add_argument("--force", action="store_true", help="overwrite an existing DIR/tokenizer.json")
    t.set_defaults(func=run_train)
