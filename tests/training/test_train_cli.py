"""`xlstm train` on the command line: a short run, --list, and bad input as a clear error (exit code 2)."""

import pytest

from xlstm_torch.cli import main

from .conftest import fast_overrides


def test_list_shows_the_shipped_recipes(capsys):
    assert main(["train", "--list"]) == 0
    assert {"default", "debug"} <= set(capsys.readouterr().out.split())


def test_a_short_run_then_resume_then_generate(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "debug", "--out", str(out), "--max-steps", "4", *fast_overrides(
        corpus, tmp_path / "cache", sample_tokens=8)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "done: 4 steps" in printed and "sample:" in printed
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "6"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "5"]) == 0


def test_default_out_is_a_new_numbered_folder(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--preset", "debug", "--max-steps", "2", *fast_overrides(corpus, tmp_path / "cache")]
    assert main(args) == 0 and main(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["debug-1", "debug-2"]
    assert main(["train", "--preset", "debug", "--resume", "--max-steps", "3",
                 *fast_overrides(corpus, tmp_path / "cache")]) == 0
    assert "runs/debug-2" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "debug", "lrr=1"], "did you mean 'lr'"),
    (["--preset", "debug", "--data", "/no/such/path"], "/no/such/path"),
    (["--out", "{tmp}/missing", "--resume"], "holds no training run"),
])
def test_bad_input_is_a_clear_error(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["train", *args, f"cache_dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlstm train: error:") and message in err


def test_binary_and_empty_data_files_are_errors(tmp_path, capsys):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02 not text")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path in (binary, empty):
        assert main(["train", "--preset", "debug", "--data", str(path), "--out", str(tmp_path / "o"),
                     f"cache_dir={tmp_path / 'cache'}"]) == 2
        assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written for a run that could not start
