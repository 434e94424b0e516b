"""Documents from the embedded corpus, files, folders, JSONL and HF datasets; the hash split."""

from __future__ import annotations

import gzip
import json
import random
import sys
import sysconfig
from pathlib import Path

import pytest

from xlstm_torch.training.data import (
    STDLIB_SOURCE_PREFIX,
    DataError,
    DataWarning,
    Document,
    iter_documents,
    split_documents,
    stdlib_corpus_files,
)


def docs_of(paths, **kw):
    return list(iter_documents(paths, **kw))


# ---- the embedded corpus -------------------------------------------------------------------------------

def test_stdlib_corpus_files_exclude_tests_and_are_sorted():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_corpus_files()
    relative = [f.relative_to(root).as_posix() for f in files]
    assert relative == sorted(relative, key=lambda r: r.split("/")) and len(set(relative)) == len(relative)
    assert stdlib_corpus_files() == files  # the same list every time
    for rel in relative:
        parts = rel.split("/")
        assert rel.endswith(".py")
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts[:-1]), rel
    assert {"os.py", "json/decoder.py", "collections/__init__.py"} <= set(relative)
    # Test suites exist in the interpreter but are left out.
    if (root / "test").is_dir():
        assert not any(r.startswith("test/") for r in relative)
    size = sum(f.stat().st_size for f in files)
    assert 2e6 < size < 60e6  # ~12 MB on CPython 3.11; far off means the filter is wrong


def test_stdlib_documents_are_named_relative_to_the_stdlib():
    docs = []
    for doc in iter_documents(None):
        docs.append(doc)
        if len(docs) == 20:
            break
    assert all(d.source.startswith(STDLIB_SOURCE_PREFIX) and d.text for d in docs)
    root = Path(sysconfig.get_paths()["stdlib"])
    first = docs[0]
    assert (root / first.source[len(STDLIB_SOURCE_PREFIX):]).read_text(encoding="utf-8").lstrip("\ufeff") == first.text


# ---- files and folders ---------------------------------------------------------------------------------

def test_text_file_is_one_document(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffhello\nwörld\n".encode("utf-8"))
    assert docs_of([str(f)]) == [Document(str(f), "hello\nwörld\n")]
    assert docs_of(f) == docs_of([f])  # one path may be given on its own


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("z = 1\n")
    (tmp_path / "b" / "a.md").write_text("# a\n")
    (tmp_path / "c.txt").write_text("c\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "j1"}) + "\n" + json.dumps({"text": "j2"}) + "\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "empty.txt").write_text("")
    docs = docs_of([tmp_path])
    assert [d.source for d in docs] == [f"{tmp_path}/a.jsonl:1", f"{tmp_path}/a.jsonl:2", f"{tmp_path}/b/a.md",
                                        f"{tmp_path}/b/z.py", f"{tmp_path}/c.txt"]
    assert [d.text for d in docs] == ["j1", "j2", "# a\n", "z = 1\n", "c\n"]


def test_binary_and_non_utf8_files_in_a_folder_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "good.txt").write_text("good\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.warns(DataWarning) as caught:
        docs = docs_of([tmp_path])
    assert [d.source for d in docs] == [str(tmp_path / "good.txt")]
    messages = " ".join(str(w.message) for w in caught)
    assert "image.png" in messages and "binary" in messages
    assert "latin1.txt" in messages and "not UTF-8" in messages


def test_unreadable_file_in_a_folder_is_skipped_but_named_explicitly_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "good.txt").write_text("good\n")
    locked = tmp_path / "locked.txt"
    locked.write_text("secret\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):  # chmod cannot lock a file for root, so refuse the read here
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.warns(DataWarning, match="locked.txt.*Permission denied"):
        assert [d.text for d in docs_of([tmp_path])] == ["good\n"]
    with pytest.raises(DataError, match="cannot read .*locked.txt.*Permission denied"):
        docs_of([locked])


@pytest.mark.parametrize("content, problem", [(b"ab\0cd", "binary"), (b"caf\xe9", "not UTF-8")])
def test_explicit_binary_or_non_utf8_file_is_an_error(tmp_path, content, problem):
    f = tmp_path / "data.bin"
    f.write_bytes(content)
    with pytest.raises(DataError, match=f"data.bin.*{problem}"):
        docs_of([f])


def test_missing_and_empty_paths_are_errors(tmp_path):
    with pytest.raises(DataError, match="nope.txt.*does not exist"):
        docs_of([tmp_path / "nope.txt"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt.*is empty"):
        docs_of([tmp_path / "empty.txt"])
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="void.*holds no text"):
        docs_of([tmp_path / "void"])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.so").write_bytes(b"\x7fELF\0\0")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="bin.*holds no text"):
        docs_of([tmp_path / "bin"])
    with pytest.raises(DataError, match="paths is empty"):
        docs_of([])
    with pytest.raises(TypeError, match="data path must be"):
        docs_of([3])
    with pytest.raises(TypeError, match="text_field"):
        docs_of(None, text_field="")


def test_second_path_errors_even_after_the_first_yielded(tmp_path):
    (tmp_path / "a.txt").write_text("a\n")
    with pytest.raises(DataError, match="missing"):
        docs_of([tmp_path / "a.txt", tmp_path / "missing"])


# ---- JSONL ---------------------------------------------------------------------------------------------

def test_jsonl_lines_are_documents(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "one", "id": 1}\n\n{"text": ""}\n{"text": "thrée"}\n', encoding="utf-8")
    assert docs_of([f]) == [Document(f"{f}:1", "one"), Document(f"{f}:4", "thrée")]
    g = tmp_path / "d.jsonl.gz"
    with gzip.open(g, "wt", encoding="utf-8") as out:
        out.write('{"body": "zipped"}\n')
    assert docs_of([g], text_field="body") == [Document(f"{g}:1", "zipped")]


@pytest.mark.parametrize("line, problem", [
    ('{"txt": "x"}', r"d.jsonl:2: no field 'text' \(found \['txt'\]\)"),
    ('{"text": 5}', "d.jsonl:2: field 'text' is int, not a string"),
    ('{"text": "x"', "d.jsonl:2: not valid JSON"),
    ('["text"]', "d.jsonl:2: no field 'text'"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, problem):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=problem):
        docs_of([f])


def test_broken_gzip_jsonl_is_an_error(tmp_path):
    g = tmp_path / "d.jsonl.gz"
    g.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read JSONL file .*d.jsonl.gz"):
        docs_of([g])


# ---- Hugging Face datasets saved to disk --------------------------------------------------------------

def test_hf_dataset_without_the_package_says_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="ds.*pip install datasets"):
        docs_of([folder])


def test_hf_dataset_rows_are_documents(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["alpha", "", "gamma"], "n": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert docs_of([tmp_path / "ds"]) == [Document(f"{tmp_path}/ds:0", "alpha"), Document(f"{tmp_path}/ds:2", "gamma")]
    with pytest.raises(DataError, match=r"has no column 'body' \(columns: \['text', 'n'\]\)"):
        docs_of([tmp_path / "ds"], text_field="body")
    with pytest.raises(DataError, match="ds:0: column 'n' holds int"):
        docs_of([tmp_path / "ds"], text_field="n")
    both = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["v"]}),
                                 "train": datasets.Dataset.from_dict({"text": ["t0", "t1"]})})
    both.save_to_disk(str(tmp_path / "dd"))
    assert [d.source for d in docs_of([tmp_path / "dd"])] == [f"{tmp_path}/dd/train:0", f"{tmp_path}/dd/train:1",
                                                              f"{tmp_path}/dd/validation:0"]
    # Inside a larger folder a saved dataset is still read as rows, not as its arrow and json files.
    (tmp_path / "notes.txt").write_text("notes\n")
    assert [d.text for d in docs_of([tmp_path])] == ["t0", "t1", "v", "alpha", "gamma", "notes\n"]  # dd < ds


def test_damaged_hf_dataset_is_an_error(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load the dataset .*ds"):
        docs_of([folder])


# ---- the train/validation split -----------------------------------------------------------------------

def make_docs(n, prefix="f"):
    return [Document(f"{prefix}{i}.py", f"text {i}\n") for i in range(n)]


def test_split_depends_only_on_the_source_path():
    docs = make_docs(2000)
    train, val = split_documents(docs, val_fraction=0.05, seed=0)
    assert len(train) + len(val) == 2000 and 40 < len(val) < 170  # ~100 expected
    assert [d.source for d in train + val] != [d.source for d in docs]  # a real split, input order inside each part
    assert train == [d for d in docs if d in train] and val == [d for d in docs if d in val]
    val_sources = {d.source for d in val}
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    assert {d.source for d in split_documents(shuffled, 0.05, 0)[1]} == val_sources  # order does not matter
    edited = [Document(d.source, "other text") for d in docs]
    assert {d.source for d in split_documents(edited, 0.05, 0)[1]} == val_sources  # content does not matter
    more = docs + make_docs(500, prefix="g")
    assert {d.source for d in split_documents(more, 0.05, 0)[1]} & val_sources == val_sources  # others stay put
    assert {d.source for d in split_documents(docs, 0.05, seed=1)[1]} != val_sources  # the seed changes it
    assert split_documents(iter(docs), 0.05, 0) == (train, val)  # any iterable


def test_split_keeps_both_sides_non_empty():
    docs = make_docs(3)
    train, val = split_documents(docs, val_fraction=1e-9)
    assert len(train) == 2 and len(val) == 1
    train, val = split_documents(docs, val_fraction=1 - 1e-9)
    assert len(train) == 1 and len(val) == 2


def test_a_single_document_is_split_inside_at_a_line_end():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_documents([Document("one.txt", text)], val_fraction=0.1)
    assert train[0].text + val[0].text == text
    assert train[0].text.endswith("\n") and val[0].text.startswith("line ")
    cut = len(train[0].text)
    assert abs(cut - 0.9 * len(text)) <= 9  # within one line of 90 %
    assert (train[0].source, val[0].source) == (f"one.txt[:{cut}]", f"one.txt[{cut}:]")
    # Without newlines it cuts at the character.
    train, val = split_documents([Document("x", "a" * 100)], val_fraction=0.25)
    assert (len(train[0].text), len(val[0].text)) == (75, 25)


def test_split_errors():
    with pytest.raises(DataError, match="only document 'x'.*1 character"):
        split_documents([Document("x", "a")])
    with pytest.raises(DataError, match="no documents"):
        split_documents([])
    for bad in (0, 1, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            split_documents(make_docs(3), val_fraction=bad)
    with pytest.raises(TypeError, match="seed"):
        split_documents(make_docs(3), seed=1.5)
