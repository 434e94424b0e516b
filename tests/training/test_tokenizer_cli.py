"""``xlstm tokenizer train``: a byte-level BPE that round-trips any text, written atomically."""

from __future__ import annotations

import json
import sys

import pytest

from xlstm_torch.cli import main
from xlstm_torch.training.data import TokenCache, build_tokenizer, iter_documents


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.py").write_text("def add(a, b):\n    return a + b\n\n" * 30)
    (folder / "b.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 30)
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": f"record {i} for the dog"}) for i in range(20)))
    return folder


def train(tmp_path, corpus, *extra):
    return main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                 *extra])


def test_train_writes_a_tokenizer_that_round_trips_any_text(tmp_path, corpus, capsys):
    pytest.importorskip("tokenizers")
    assert train(tmp_path, corpus) == 0
    out = capsys.readouterr().out
    assert "tokenizer.json" in out and "vocab 300" in out and "from 22 documents" in out
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]  # no temporary file left
    tok = build_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 300 and tok.fingerprint.startswith("sha256:")
    for text in ["def add(a, b):\n    return a + b\n", "unseen: Ünïcödé 🙂 \t\r\n\x00 ☃", "   leading spaces", ""]:
        assert tok.decode(tok.encode(text)) == text
    learned = tok.encode("the quick brown fox")
    assert len(learned) < len("the quick brown fox".encode()) / 2  # merges were learned from the corpus
    # It tokenises a corpus into the cache like any tokenizer.
    data = TokenCache.build(list(iter_documents([corpus])), tok, tmp_path / "cache")
    assert data.vocab_size == 300 and data.tokens.max() < 300


def test_existing_tokenizer_is_kept_without_force(tmp_path, corpus, capsys):
    pytest.importorskip("tokenizers")
    assert train(tmp_path, corpus) == 0
    before = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert main(["tokenizer", "train", "--data", str(corpus / "b.txt"), "--vocab-size", "280",
                 "--out", str(tmp_path / "tok")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == before
    assert main(["tokenizer", "train", "--data", str(corpus / "b.txt"), "--vocab-size", "280",
                 "--out", str(tmp_path / "tok"), "--force"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() != before


@pytest.mark.parametrize("args, message", [
    (["--vocab-size", "100"], "--vocab-size must be >= 256"),
    (["--data", "MISSING"], "MISSING' does not exist"),
    (["--out", "FILE"], "is a file, not a folder"),
])
def test_bad_arguments_are_clear_errors(tmp_path, corpus, capsys, args, message):
    (tmp_path / "FILE").write_text("")
    argv = {"--data": str(corpus), "--vocab-size": "300", "--out": str(tmp_path / "tok")}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = str(tmp_path / value) if value.isupper() else value
    assert main(["tokenizer", "train", *[x for kv in argv.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlstm tokenizer train: error:") and message in err
    assert not (tmp_path / "tok").exists()  # nothing written on failure


def test_missing_tokenizers_package_says_how_to_install(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    assert train(tmp_path, corpus) == 2
    assert "pip install tokenizers" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


def test_tokenizer_command_is_listed(capsys):
    assert main([]) == 0
    assert "tokenizer" in capsys.readouterr().out
    assert main(["tokenizer"]) == 0
    assert "train" in capsys.readouterr().out
