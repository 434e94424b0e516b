"""Where training text comes from: the embedded corpus, files, folders, JSONL, local HF datasets.

The xLSTM paper (Beck et al., 2024, Sec. 4) trains on large text corpora; for a first run on a laptop
with no download this library embeds one: the Python standard library's own source files of the
running interpreter (test folders left out, about 12 MB on CPython 3.11). Any other text is read the
same way, one ``Document`` per file, JSONL line or dataset row, and split into training and
validation by a hash of each document's ``source`` so the split never depends on order or chance.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataError", "DataWarning", "Document", "stdlib_corpus_files", "iter_documents", "split_documents",
           "STDLIB_SOURCE_PREFIX"]

# Sources of the embedded corpus are "stdlib:<path below the stdlib folder>", not absolute paths, so that
# the split and the token cache are the same wherever the interpreter is installed.
STDLIB_SOURCE_PREFIX = "stdlib:"

# Folders of the standard library that hold its test suites (or installed packages), left out of the corpus.
_STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

# A local Hugging Face dataset written by ``save_to_disk``: one of these files sits in its folder.
_HF_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


class DataError(ValueError):
    """Bad training data: the message names the path or argument and what is wrong with it."""


class DataWarning(UserWarning):
    """A file inside a data folder was skipped (binary, not UTF-8, unreadable)."""


@dataclass(frozen=True)
class Document:
    """One unit of text: a file, a JSONL line or a dataset row.

    ``source`` names where it came from: a path, ``"path:line"`` (JSONL, 1-based), ``"path:index"``
    (a dataset row) or ``"stdlib:<relative path>"`` (the embedded corpus). The train/validation split
    hashes it, so it must be stable.
    """

    source: str
    text: str


def stdlib_corpus_files() -> list[Path]:
    """The running interpreter's standard library ``.py`` files, sorted, without test folders.

    Leaves out every file below a folder named ``test``, ``tests`` or ``idle_test`` (the test
    suites: ``test/``, ``idlelib/idle_test``, ``lib2to3/tests``, ``unittest/test``, ...), installed
    packages (``site-packages``) and the build configuration folder ``config-*``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune whole excluded folders (the test suite alone is a third of the tree) instead of filtering files.
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS
                       and not (dirpath == str(root) and d.startswith("config-"))]
        files.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    files = [f for f in files if f.is_file()]
    if not files:
        raise DataError(f"found no standard library sources under {str(root)!r} (is this a full Python install?)")
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def _stdlib_documents() -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_corpus_files():
        text = _read_text(path, explicit=False)
        if text:
            yield Document(STDLIB_SOURCE_PREFIX + path.relative_to(root).as_posix(), text)


def iter_documents(paths: Iterable[str | os.PathLike] | str | os.PathLike | None, *,
                   text_field: str = "text") -> Iterator[Document]:
    """The documents of ``paths`` (or of the embedded standard-library corpus when ``paths`` is None).

    Each path is one of:
      * a text file: one document (UTF-8, a leading byte-order mark dropped);
      * a ``.jsonl`` / ``.jsonl.gz`` file: one document per non-blank line, the string in ``text_field``;
      * a folder saved by Hugging Face ``datasets`` (``save_to_disk``): one document per row, read
        offline with ``datasets.load_from_disk`` (every split of a ``DatasetDict``, in name order);
      * any other folder: its files (and saved datasets) recursively in order of relative path, read
        as above, hidden files and folders skipped, binary or non-UTF-8 files skipped with a ``DataWarning``.

    Empty documents are dropped. Raises ``DataError`` for a missing path, an empty file or folder, a
    binary or unreadable file named explicitly, a bad JSONL line (named ``file:line``), and when no
    document is found at all. Documents are produced lazily; the errors come when a path is reached.
    """
    if not isinstance(text_field, str) or not text_field:
        raise TypeError(f"text_field must be a non-empty str, got {text_field!r}")
    if paths is None:
        yield from _stdlib_documents()
        return
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DataError("paths is empty: give at least one file or folder (or None for the embedded corpus)")
    for given in paths:
        if not isinstance(given, (str, os.PathLike)):
            raise TypeError(f"each data path must be a str or os.PathLike, got {type(given).__name__}")
        path = Path(given)
        if not path.exists():
            raise DataError(f"data path {str(path)!r} does not exist")
        if path.is_dir():
            docs = _dataset_documents(path, text_field) if _is_hf_dataset(path) else _folder_documents(path, text_field)
        else:
            docs = _file_documents(path, text_field, explicit=True)
        count = 0
        for doc in docs:
            count += 1
            yield doc
        if count == 0:
            kind = "folder" if path.is_dir() else "file"
            raise DataError(f"data {kind} {str(path)!r} holds no text (empty, or only skipped files)")


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def _is_hf_dataset(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in _HF_DATASET_MARKERS)


def _skip_or_raise(message: str, explicit: bool) -> None:
    if explicit:
        raise DataError(message)
    warnings.warn(f"skipped: {message}", DataWarning, stacklevel=2)


def _read_text(path: Path, explicit: bool) -> str | None:
    """The UTF-8 text of ``path``; None (after a warning) for a binary or unreadable file in a folder."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        _skip_or_raise(f"cannot read {str(path)!r}: {err.strerror or err}", explicit)
        return None
    if b"\0" in raw:
        _skip_or_raise(f"{str(path)!r} is a binary file (it holds NUL bytes), not text", explicit)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        _skip_or_raise(f"{str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason})", explicit)
        return None
    return text.removeprefix("\ufeff")


def _file_documents(path: Path, text_field: str, explicit: bool) -> Iterator[Document]:
    if _is_jsonl(path):
        yield from _jsonl_documents(path, text_field, explicit)
        return
    text = _read_text(path, explicit)
    if text is None:
        return
    if not text and explicit:
        raise DataError(f"data file {str(path)!r} is empty")
    if text:
        yield Document(str(path), text)


def _jsonl_documents(path: Path, text_field: str, explicit: bool) -> Iterator[Document]:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
        content = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        _skip_or_raise(f"cannot read JSONL file {str(path)!r}: {err}", explicit)
        return
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where}: no field {text_field!r} (found {keys}); choose it with text_field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
        if text:
            yield Document(where, text)


def _folder_documents(folder: Path, text_field: str) -> Iterator[Document]:
    entries = []  # files, and saved datasets met inside the tree (read as datasets, not as their arrow files)
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if here != folder and _is_hf_dataset(here):
            entries.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders
        entries.extend(here / name for name in filenames if not name.startswith("."))
    # One order for the whole tree, by relative path, whatever order the file system lists in.
    for path in sorted(entries, key=lambda p: p.relative_to(folder).parts):
        if path.is_dir():
            yield from _dataset_documents(path, text_field)
        elif path.is_file():
            yield from _file_documents(path, text_field, explicit=False)


def _dataset_documents(folder: Path, text_field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{str(folder)!r} is a Hugging Face dataset folder; reading it needs the 'datasets' "
                        "package: pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # the library raises many kinds for a damaged folder; name the folder in one
        raise DataError(f"cannot load the dataset {str(folder)!r}: {err}") from None
    splits = [(f"{folder}/{name}", loaded[name]) for name in sorted(loaded)] if isinstance(
        loaded, datasets.DatasetDict) else [(str(folder), loaded)]
    for name, split in splits:
        if text_field not in split.column_names:
            raise DataError(f"dataset {name!r} has no column {text_field!r} (columns: {split.column_names}); "
                            "choose it with text_field")
        for index, text in enumerate(split[text_field]):
            if not isinstance(text, str):
                raise DataError(f"{name}:{index}: column {text_field!r} holds {type(text).__name__}, not a string")
            if text:
                yield Document(f"{name}:{index}", text)


def _split_hash(seed: int, source: str) -> float:
    """A number in [0, 1) fixed by (seed, source) alone: the first 8 bytes of a SHA-256, scaled."""
    digest = hashlib.sha256(f"{seed}\0{source}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_documents(docs: Iterable[Document], val_fraction: float = 0.05,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Split into (train, validation), each in input order, by a hash of each document's source.

    A document goes to validation iff ``hash(seed, source) < val_fraction``, so the split depends on
    the source names only: not on their order, the other documents, or any random state. Both parts
    are kept non-empty: if the hash puts every document on one side, the one nearest the threshold
    (smallest hash for an empty validation, largest for an empty training side) moves across.

    A single document is split inside: its first ``1 - val_fraction`` of characters (cut after the
    last newline before that point, if there is one) train, the rest validates; the two parts are
    named ``"source[:cut]"`` and ``"source[cut:]"`` (character indices).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    docs = list(docs)
    if not docs:
        raise DataError("split_documents got no documents")
    if len(docs) == 1:
        return _split_inside(docs[0], val_fraction)
    hashes = [_split_hash(seed, doc.source) for doc in docs]
    is_val = [h < val_fraction for h in hashes]
    if not any(is_val):
        is_val[min(range(len(docs)), key=hashes.__getitem__)] = True
    elif all(is_val):
        is_val[max(range(len(docs)), key=hashes.__getitem__)] = False
    train = [doc for doc, v in zip(docs, is_val) if not v]
    val = [doc for doc, v in zip(docs, is_val) if v]
    return train, val


def _split_inside(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    text = doc.text
    target = min(max(int(round(len(text) * (1 - val_fraction))), 1), len(text) - 1)
    if target < 1:
        raise DataError(f"cannot split the only document {doc.source!r} into train and validation: "
                        f"it has {len(text)} character(s); give more text or a second document")
    newline = text.rfind("\n", 0, target)
    # Keep whole lines on each side when a line ends in the second half of the training part.
    cut = newline + 1 if newline + 1 > target // 2 else target
    return ([Document(f"{doc.source}[:{cut}]", text[:cut])],
            [Document(f"{doc.source}[{cut}:]", text[cut:])])
