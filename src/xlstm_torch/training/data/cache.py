"""Tokenise once: a memory-mapped token cache keyed by the content it was built from.

Language-model training (Beck et al., 2024, Sec. 4) reads the same token stream for many steps; the
text is tokenised once into ``tokens.npy`` (all documents back to back) and ``doc_offsets.npy``
(where each document starts), both read back with ``np.load(mmap_mode="r")`` so a corpus larger than
memory costs only the pages touched. The folder name is a SHA-256 of the tokenizer's fingerprint and
of each document's source and text, so a changed file, tokenizer or split is a new cache, and the
same content is found again without tokenising.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlstm_torch.tokenizers import TOKENIZER_NAME, ByteTokenizer, JSONTokenizer, Tokenizer
from xlstm_torch.training.data.sources import DataError, DataWarning, Document

__all__ = ["build_tokenizer", "default_cache_dir", "TokenCache", "TokenDataset"]

_CACHE_FORMAT = 1  # bump when the files' layout changes: old caches then miss instead of misreading
_ENCODE_BATCH_DOCS = 256  # documents per call to a tokenizer's encode_batch (bounds the Python lists held)


def build_tokenizer(spec: str | os.PathLike | None) -> Tokenizer:
    """The tokenizer named by ``spec``: None or ``"byte"`` -> ``ByteTokenizer`` (ids = UTF-8 bytes);
    a ``tokenizer.json`` file, or a folder holding one -> ``JSONTokenizer`` (needs ``tokenizers``)."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"tokenizer must be None, 'byte' or a path to a {TOKENIZER_NAME}, got {type(spec).__name__}")
    path = Path(spec)
    if path.is_dir():
        path = path / TOKENIZER_NAME
    if not path.is_file():
        raise DataError(f"tokenizer {str(spec)!r}: no such file (give 'byte' or a path to a {TOKENIZER_NAME})")
    try:
        return JSONTokenizer(path)
    except ImportError as err:
        raise DataError(str(err)) from None
    except Exception as err:  # the Rust library raises its own exception type for a malformed file
        raise DataError(f"tokenizer {str(path)!r} cannot be read: {err}") from None


def default_cache_dir() -> Path:
    """``$XLSTM_CACHE`` if set, else ``$XDG_CACHE_HOME/xlstm-torch/tokens`` (``~/.cache`` by default)."""
    if os.environ.get("XLSTM_CACHE"):
        return Path(os.environ["XLSTM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xlstm-torch" / "tokens"


@dataclass
class TokenDataset:
    """A tokenised corpus: ``tokens`` (N,) uint16/uint32, all documents back to back, and
    ``doc_offsets`` (ndocs + 1,) int64 with document j = ``tokens[doc_offsets[j]:doc_offsets[j + 1]]``.

    ``num_bytes`` counts the UTF-8 bytes of the raw text (bits per byte = total loss in bits /
    num_bytes); ``path`` is the cache folder the arrays are mapped from (None if built in memory).
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    vocab_size: int
    num_bytes: int
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets.shape[0]) - 1


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _check_tokenizer(tokenizer) -> tuple[int, str]:
    vocab_size = getattr(tokenizer, "vocab_size", None)
    fingerprint = getattr(tokenizer, "fingerprint", None)
    if not callable(getattr(tokenizer, "encode", None)) or not isinstance(fingerprint, str) or not fingerprint:
        raise TypeError("tokenizer must have encode(str) -> list[int], vocab_size and a fingerprint str "
                        "(see xlstm_torch.tokenizers)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= 2**32:
        raise ValueError(f"tokenizer.vocab_size must be an int in [1, 2**32], got {vocab_size!r}")
    return vocab_size, fingerprint


class TokenCache:
    """Builds and finds token caches: ``cache_dir/<key>/{tokens.npy, doc_offsets.npy, meta.json}``.

    The key is a SHA-256 over the tokenizer's fingerprint and vocabulary size and, for every document
    in order, its source and the SHA-256 of its text. A cache is written into a hidden temporary
    folder next to its final place and renamed into place when complete (``os.replace``), so a build
    that is killed or fails leaves no folder under the key (at most a ``.tmp-*`` folder, never read).
    """

    @staticmethod
    def key(docs: list[Document], tokenizer) -> str:
        """The cache key of ``docs`` tokenised by ``tokenizer`` (64 hex digits)."""
        vocab_size, fingerprint = _check_tokenizer(tokenizer)
        h = hashlib.sha256(f"xlstm-torch tokens v{_CACHE_FORMAT}\0{fingerprint}\0{vocab_size}\0{len(docs)}\0".encode())
        for doc in docs:
            source = doc.source.encode("utf-8")
            h.update(len(source).to_bytes(8, "little") + source)  # length-prefixed: no two lists hash alike
            h.update(hashlib.sha256(doc.text.encode("utf-8")).digest())
        return h.hexdigest()

    @staticmethod
    def build(docs: list[Document], tokenizer, cache_dir: str | os.PathLike | None = None) -> TokenDataset:
        """The token dataset of ``docs``: read from the cache when this content was tokenised before,
        else tokenised now, written atomically, and read back memory-mapped."""
        docs = list(docs)
        if not docs:
            raise DataError("no documents to tokenise")
        if not all(isinstance(d, Document) for d in docs):
            raise TypeError("docs must be a list of Document")
        vocab_size, _ = _check_tokenizer(tokenizer)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = root / TokenCache.key(docs, tokenizer)
        if final.exists():
            try:
                return _load(final)
            except (OSError, ValueError, KeyError) as err:
                warnings.warn(f"token cache {str(final)!r} is damaged ({err}); building it again", DataWarning,
                              stacklevel=2)
                shutil.rmtree(final, ignore_errors=True)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the token cache folder {str(root)!r}: {err.strerror or err}") from None
        tokens, offsets, num_bytes = _tokenise(docs, tokenizer, vocab_size)
        _write_atomically(final, tokens, offsets, {
            "format": _CACHE_FORMAT, "tokenizer": tokenizer.fingerprint, "vocab_size": vocab_size,
            "num_documents": len(docs), "num_tokens": int(tokens.shape[0]), "num_bytes": num_bytes,
            "dtype": tokens.dtype.name, "first_source": docs[0].source, "last_source": docs[-1].source})
        return _load(final)


def _tokenise(docs: list[Document], tokenizer, vocab_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens (N,), doc_offsets (ndocs + 1,) int64, UTF-8 byte count) of the documents back to back."""
    dtype = _token_dtype(vocab_size)
    encoded = [doc.text.encode("utf-8") for doc in docs]
    num_bytes = sum(len(b) for b in encoded)
    if type(tokenizer) is ByteTokenizer:  # not a subclass: one that overrides encode takes the general path
        # Fast path: the ids are the bytes themselves; one join and one view, no Python list per token.
        lengths = [len(b) for b in encoded]
        tokens = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(dtype)  # (N,)
    else:
        del encoded
        batch_encode = getattr(tokenizer, "encode_batch", None)
        pieces = []
        for start in range(0, len(docs), _ENCODE_BATCH_DOCS):
            texts = [doc.text for doc in docs[start:start + _ENCODE_BATCH_DOCS]]
            ids = batch_encode(texts) if callable(batch_encode) else [tokenizer.encode(t) for t in texts]
            pieces.extend(np.asarray(i, dtype=np.int64).reshape(-1) for i in ids)
        lengths = [p.shape[0] for p in pieces]
        ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)  # (N,)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise DataError(f"the tokenizer produced id {bad}, outside its vocab_size {vocab_size}")
        tokens = ids.astype(dtype)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if tokens.shape[0] == 0:
        raise DataError(f"the {len(docs)} document(s) tokenise to no tokens at all")
    return tokens, offsets, num_bytes


def _write_atomically(final: Path, tokens: np.ndarray, offsets: np.ndarray, meta: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:16]}-", dir=final.parent))
    try:
        np.save(tmp / "tokens.npy", tokens)
        np.save(tmp / "doc_offsets.npy", offsets)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            # Another process finished the same cache first; its content is the same by construction.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(folder: Path) -> TokenDataset:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != _CACHE_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {_CACHE_FORMAT}")
    tokens = np.load(folder / "tokens.npy", mmap_mode="r")
    offsets = np.load(folder / "doc_offsets.npy", mmap_mode="r")
    if (tokens.ndim != 1 or tokens.shape[0] != meta["num_tokens"] or offsets.shape[0] != meta["num_documents"] + 1
            or int(offsets[-1]) != tokens.shape[0] or tokens.dtype.name != meta["dtype"]):
        raise ValueError("the arrays do not match meta.json")
    return TokenDataset(tokens=tokens, doc_offsets=offsets, vocab_size=int(meta["vocab_size"]),
                        num_bytes=int(meta["num_bytes"]), path=folder)
