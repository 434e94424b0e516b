"""Text <-> token ids for the command line: UTF-8 bytes, or a checkpoint's own ``tokenizer.json``.

The byte tokenizer needs no file: ids 0..255 are the bytes of the UTF-8 text, which is what the
library's small byte-level models are trained on. A checkpoint directory that holds a
``tokenizer.json`` (the Hugging Face ``tokenizers`` format, as shipped with xLSTM 7B) is read with
the optional ``tokenizers`` package instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

__all__ = ["Tokenizer", "ByteTokenizer", "JSONTokenizer", "load_tokenizer", "TOKENIZER_NAME"]

TOKENIZER_NAME = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int
    fingerprint: str  # names the id mapping exactly: two tokenizers with one fingerprint encode alike

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """ids 0..255 are UTF-8 bytes; decoding replaces invalid byte sequences (and ids > 255) by U+FFFD."""

    vocab_size = 256
    fingerprint = "byte"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Text of the byte ids; an id outside 0..255 (a model whose vocabulary is padded past the
        bytes can still emit one) decodes to U+FFFD like an invalid byte sequence."""
        text, run = [], bytearray()
        for i in map(int, ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            text.append(run.decode("utf-8", errors="replace") + "\ufffd")
            run = bytearray()
        return "".join(text) + run.decode("utf-8", errors="replace")


class JSONTokenizer:
    """A ``tokenizer.json`` file read by the Hugging Face ``tokenizers`` package."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError:
            raise ImportError(f"reading {str(path)!r} needs the 'tokenizers' package: pip install tokenizers "
                              "(or delete the file to use the byte tokenizer)") from None
        self._tokenizer = _HFTokenizer.from_file(str(path))
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        # The file's bytes decide the mapping, so their hash keys token caches built with it.
        self.fingerprint = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, run in parallel by the Rust library."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(checkpoint_dir: str | os.PathLike) -> ByteTokenizer | JSONTokenizer:
    """The checkpoint's ``tokenizer.json`` if it has one, else the byte tokenizer."""
    file = Path(checkpoint_dir) / TOKENIZER_NAME
    return JSONTokenizer(file) if file.is_file() else ByteTokenizer()
