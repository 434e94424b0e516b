"""Tokenizers by name and the memory-mapped, content-keyed token cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from xlstm_torch.tokenizers import ByteTokenizer
from xlstm_torch.training.data import (
    DataError,
    DataWarning,
    Document,
    TokenCache,
    build_tokenizer,
    default_cache_dir,
    split_documents,
    iter_documents,
)
from xlstm_torch.training.data import cache as cache_module


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Nothing under test may write to the user's ~/.cache.
    monkeypatch.setenv("XLSTM_CACHE", str(tmp_path / "default-cache"))


class CountingTokenizer:
    """Byte ids shifted by ``shift`` in a vocabulary of ``vocab_size``; counts encode calls."""

    def __init__(self, vocab_size=256, shift=0, fingerprint="counting"):
        self.vocab_size, self.shift, self.fingerprint, self.calls = vocab_size, shift, fingerprint, 0

    def encode(self, text):
        self.calls += 1
        return [b + self.shift for b in text.encode("utf-8")]


DOCS = [Document("a.txt", "hello\n"), Document("b.txt", "wörld 🙂\n"), Document("c.txt", "x")]


def test_build_tokenizer_by_name(tmp_path):
    assert isinstance(build_tokenizer(None), ByteTokenizer) and build_tokenizer("byte").fingerprint == "byte"
    with pytest.raises(DataError, match="nothing.json.*no such file"):
        build_tokenizer(str(tmp_path / "nothing.json"))
    with pytest.raises(TypeError, match="tokenizer must be"):
        build_tokenizer(256)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    pytest.importorskip("tokenizers")
    with pytest.raises(DataError, match="tokenizer.json.*cannot be read"):
        build_tokenizer(tmp_path)


def test_json_tokenizer_fingerprint_is_the_file_hash(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from xlstm_torch.training.tokenizer_cli import train_bpe

    tok = train_bpe(["abc abc abd " * 20], 260)
    (tmp_path / "one").mkdir()
    tok.save(str(tmp_path / "one" / "tokenizer.json"))
    loaded = build_tokenizer(tmp_path / "one")  # a folder holding tokenizer.json works too
    raw = (tmp_path / "one" / "tokenizer.json").read_bytes()
    assert loaded.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert build_tokenizer(str(tmp_path / "one" / "tokenizer.json")).fingerprint == loaded.fingerprint
    other = train_bpe(["xyz xyz xyw " * 20], 260)
    other.save(str(tmp_path / "other.json"))
    assert build_tokenizer(tmp_path / "other.json").fingerprint != loaded.fingerprint
    assert isinstance(tokenizers.Tokenizer.from_file(str(tmp_path / "other.json")), tokenizers.Tokenizer)


def test_cache_files_layout_and_content(tmp_path):
    data = TokenCache.build(DOCS, ByteTokenizer(), tmp_path)
    assert data.path.parent == tmp_path and data.path.name == TokenCache.key(DOCS, ByteTokenizer())
    assert sorted(p.name for p in data.path.iterdir()) == ["doc_offsets.npy", "meta.json", "tokens.npy"]
    assert isinstance(data.tokens, np.memmap) and data.tokens.dtype == np.uint16
    assert data.doc_offsets.dtype == np.int64 and data.doc_offsets.shape == (4,)
    raw = [d.text.encode("utf-8") for d in DOCS]
    assert len(data) == sum(map(len, raw)) == data.num_bytes and data.vocab_size == 256 and data.num_documents == 3
    for j, doc in enumerate(DOCS):
        piece = data.tokens[data.doc_offsets[j]:data.doc_offsets[j + 1]]
        assert ByteTokenizer().decode(piece.tolist()) == doc.text
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["num_tokens"] == len(data) and meta["tokenizer"] == "byte" and meta["dtype"] == "uint16"


def test_byte_fast_path_equals_the_general_path(tmp_path):
    fast = TokenCache.build(DOCS, ByteTokenizer(), tmp_path)
    slow = TokenCache.build(DOCS, CountingTokenizer(), tmp_path)
    assert fast.path != slow.path  # other fingerprint, other cache
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.doc_offsets, slow.doc_offsets)


def test_second_build_is_a_hit_and_any_change_is_a_miss(tmp_path):
    tok = CountingTokenizer()
    first = TokenCache.build(DOCS, tok, tmp_path)
    assert tok.calls == 3
    again = TokenCache.build(list(DOCS), tok, tmp_path)
    assert tok.calls == 3 and again.path == first.path  # hit: nothing tokenised
    np.testing.assert_array_equal(again.tokens, first.tokens)
    variants = [
        [Document("a.txt", "hello!\n")] + DOCS[1:],  # one text changed
        [Document("A.txt", "hello\n")] + DOCS[1:],  # one source renamed
        DOCS[::-1],  # another order
        DOCS[:2],  # a document fewer
    ]
    keys = {first.path.name}
    for docs in variants:
        keys.add(TokenCache.build(docs, tok, tmp_path).path.name)
    keys.add(TokenCache.build(DOCS, CountingTokenizer(fingerprint="other"), tmp_path).path.name)
    keys.add(TokenCache.build(DOCS, CountingTokenizer(vocab_size=300), tmp_path).path.name)
    assert len(keys) == 1 + len(variants) + 2
    # Two source lists that concatenate alike still differ (sources are length-prefixed).
    assert TokenCache.key([Document("ab", "x"), Document("c", "y")], tok) != \
        TokenCache.key([Document("a", "x"), Document("bc", "y")], tok)


@pytest.mark.parametrize("vocab_size, dtype", [(256, np.uint16), (65536, np.uint16), (65537, np.uint32),
                                               (100_000, np.uint32)])
def test_token_dtype_follows_the_vocabulary(tmp_path, vocab_size, dtype):
    docs = [Document("a", "\x00 ÿ")]
    shift = vocab_size - 1 - max(docs[0].text.encode("utf-8"))  # the largest byte maps to the largest id
    data = TokenCache.build(docs, CountingTokenizer(vocab_size, shift), tmp_path)
    assert data.tokens.dtype == dtype
    expected = [b + shift for b in docs[0].text.encode("utf-8")]
    assert data.tokens.tolist() == expected and max(expected) == vocab_size - 1


def test_ids_outside_the_vocabulary_are_an_error(tmp_path):
    with pytest.raises(DataError, match="produced id 300, outside its vocab_size 256"):
        TokenCache.build([Document("a", "\x00")], CountingTokenizer(256, shift=300), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_leaves_no_folder_and_the_next_build_works(tmp_path, monkeypatch):
    real_save = np.save
    saved = []

    def save_then_fail(file, arr):  # dies between the two arrays, like a kill mid-write
        saved.append(file)
        real_save(file, arr)
        if len(saved) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        TokenCache.build(DOCS, ByteTokenizer(), tmp_path)
    assert saved and list(tmp_path.iterdir()) == []  # neither the key folder nor the temporary one
    data = TokenCache.build(DOCS, ByteTokenizer(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [data.path.name] and len(data) == 19


def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path):
    tok = CountingTokenizer()
    data = TokenCache.build(DOCS, tok, tmp_path)
    (data.path / "tokens.npy").unlink()
    with pytest.warns(DataWarning, match="damaged"):
        again = TokenCache.build(DOCS, tok, tmp_path)
    assert tok.calls == 6 and again.path == data.path and len(again) == 19
    meta = json.loads((data.path / "meta.json").read_text())
    (data.path / "meta.json").write_text(json.dumps(dict(meta, num_tokens=5)))
    with pytest.warns(DataWarning, match="do not match"):
        TokenCache.build(DOCS, tok, tmp_path)
    assert tok.calls == 9 and [p.name for p in tmp_path.iterdir()] == [data.path.name]


def test_default_cache_dir_and_bad_inputs(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "default-cache"
    data = TokenCache.build(DOCS, ByteTokenizer())
    assert data.path.parent == tmp_path / "default-cache"
    monkeypatch.delenv("XLSTM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "xlstm-torch" / "tokens"
    with pytest.raises(DataError, match="no documents to tokenise"):
        TokenCache.build([], ByteTokenizer(), tmp_path)
    with pytest.raises(TypeError, match="list of Document"):
        TokenCache.build(["text"], ByteTokenizer(), tmp_path)
    with pytest.raises(TypeError, match="fingerprint"):
        TokenCache.build(DOCS, object(), tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        TokenCache.build(DOCS, CountingTokenizer(vocab_size=0), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot create the token cache folder"):
        TokenCache.build(DOCS, ByteTokenizer(), blocker / "sub")


def test_embedded_corpus_tokenises_into_a_cache_quickly(tmp_path):
    """The whole standard-library corpus through split and byte cache: sizes add up, cache hits."""
    docs = list(iter_documents(None))
    train_docs, val_docs = split_documents(docs)
    train = TokenCache.build(train_docs, ByteTokenizer(), tmp_path)
    val = TokenCache.build(val_docs, ByteTokenizer(), tmp_path)
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    assert len(train) + len(val) == train.num_bytes + val.num_bytes == total > 2e6
    assert 0.01 < len(val) / total < 0.15
    assert TokenCache.build(train_docs, ByteTokenizer(), tmp_path).path == train.path


def test_a_build_killed_mid_write_leaves_no_cache_under_the_key(tmp_path):
    """SIGKILL between the two arrays: the key folder never appears, and the next build is complete."""
    script = (
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from xlstm_torch.tokenizers import ByteTokenizer\n"
        "from xlstm_torch.training.data import Document, TokenCache\n"
        "real_save = np.save\n"
        "def save_then_die(file, arr):\n"
        "    real_save(file, arr)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.save = save_then_die\n"
        "TokenCache.build([Document('a', 'hello'), Document('b', 'world')], ByteTokenizer(), sys.argv[1])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    key = TokenCache.key([Document("a", "hello"), Document("b", "world")], ByteTokenizer())
    left = [p.name for p in tmp_path.iterdir()]
    assert key not in left and all(name.startswith(".tmp-") for name in left) and left  # only the hidden temp
    data = TokenCache.build([Document("a", "hello"), Document("b", "world")], ByteTokenizer(), tmp_path)
    assert data.path.name == key and bytes(data.tokens.tolist()) == b"helloworld"


def test_a_cache_finished_first_by_another_process_is_kept(tmp_path):
    """Ranks of a distributed run may build the same cache at once: the first rename wins, others agree."""
    first = TokenCache.build(DOCS, ByteTokenizer(), tmp_path)
    before = (first.path / "meta.json").stat().st_mtime_ns
    tokens, offsets, _ = cache_module._tokenise(DOCS, ByteTokenizer(), 256)
    cache_module._write_atomically(first.path, tokens, offsets, {"format": -1})  # loses the race to `first`
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # its temporary folder is gone
    assert (first.path / "meta.json").stat().st_mtime_ns == before  # the winner's files are untouched
    assert len(TokenCache.build(DOCS, ByteTokenizer(), tmp_path)) == 19
