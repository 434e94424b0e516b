"""``xlstm generate`` and the tokenizers it uses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from xlstm_torch.checkpoint import save_pretrained
from xlstm_torch.cli import main
from xlstm_torch.generation import generate
from xlstm_torch.models import from_preset
from xlstm_torch.models.transformer import Transformer, TransformerConfig
from xlstm_torch.tokenizers import ByteTokenizer, JSONTokenizer, load_tokenizer


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.debug()).eval()
    save_pretrained(model, tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "xLSTM – Hochreiter 🙂"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.decode([0xE2, 0x80]) == "\ufffd"  # an incomplete character is replaced, not an error
    assert tok.decode([104, 300, 105]) == "h\ufffdi"  # beyond the bytes: a padded vocabulary's extra ids


def test_greedy_cli_prints_prompt_and_continuation(ckpt, capsys):
    path, model = ckpt
    assert main(["generate", str(path), "--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    expected = generate(model, torch.tensor([list(b"Hello")]), 12, temperature=0)[0].tolist()
    assert printed == ByteTokenizer().decode(expected) + "\n"


def test_cli_with_an_xlstm_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = from_preset("debug").eval()  # xLSTM[1:1], byte-sized vocabulary or larger
    save_pretrained(model, tmp_path / "xlstm")
    assert main(["generate", str(tmp_path / "xlstm"), "--prompt", "xLSTM", "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    expected = generate(model, torch.tensor([list(b"xLSTM")]), 6, temperature=0)[0].tolist()
    assert capsys.readouterr().out == ByteTokenizer().decode(expected) + "\n"


def test_sampling_cli_is_reproducible_with_seed(ckpt, capsys):
    path, _ = ckpt
    args = ["generate", str(path), "--prompt", "ab", "--max-new-tokens", "20", "--top-k", "50", "--top-p", "0.9",
            "--seed", "3"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first
    main(args[:-1] + ["4"])
    assert capsys.readouterr().out != first


def test_cli_errors_are_reported_not_raised(tmp_path, ckpt, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    path, _ = ckpt
    assert main(["generate", str(path), "--prompt", "x", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", str(path), "--prompt", ""]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_byte_prompt_must_fit_the_vocabulary(tmp_path, capsys):
    save_pretrained(Transformer(TransformerConfig.debug(vocab_size=100)), tmp_path / "small")
    assert main(["generate", str(tmp_path / "small"), "--prompt", "z"]) == 2  # "z" is byte 122
    assert "vocab_size" in capsys.readouterr().err


def test_missing_tokenizers_package_gives_a_clear_error(tmp_path, ckpt, monkeypatch, capsys):
    path, _ = ckpt
    (path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install tokenizers"):
        load_tokenizer(path)
    assert main(["generate", str(path), "--prompt", "x"]) == 2
    assert "tokenizers" in capsys.readouterr().err


def word_level_tokenizer_json(path):
    """A real tokenizer.json: a word-level vocabulary split on whitespace."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "x": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_checkpoint_tokenizer_json_is_used(ckpt, capsys):
    path, model = ckpt
    word_level_tokenizer_json(path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert isinstance(tok, JSONTokenizer) and tok.encode("hello world") == [1, 2]
    assert main(["generate", str(path), "--prompt", "hello world", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    out = generate(model, torch.tensor([[1, 2]]), 5, temperature=0)[0, 2:].tolist()
    assert capsys.readouterr().out == "hello world" + tok.decode(out) + "\n"


def test_console_entry_point_lists_generate():
    result = subprocess.run([sys.executable, "-m", "xlstm_torch.cli", "generate", "--help"],
                            capture_output=True, text=True, check=True)
    assert "CHECKPOINT_DIR" in result.stdout and "--max-new-tokens" in result.stdout
