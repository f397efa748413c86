"""Task data: layout detection, quoting off, and clear errors."""

from __future__ import annotations

import pytest

from kdeploy.core.errors import DataError
from kdeploy.data import load_task_data, read_unlabeled
from tests.conftest import shared_data


def write_split(d, name, text):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.tsv").write_text(text, encoding="utf-8")


def test_real_stsb_is_sts_and_keeps_quotes():
    data = load_task_data(shared_data("stsb"))
    assert data.task == "sts"
    assert len(data.splits["train"]) == 5749
    assert len(data.splits["dev"]) == 1500
    assert len(data.splits["test"]) == 1379
    assert data.eval_split().name == "test"
    # quoting off: sentences with a double quote are read verbatim, rows do not merge
    assert any('"' in t for t in data.splits["test"].texts())
    assert all(0.0 <= s <= 5.0 for s in data.splits["test"].labels)


def test_real_sst2_is_classification_and_evaluates_on_dev():
    data = load_task_data(shared_data("sst2"))
    assert data.task == "classification"
    assert data.num_labels == 2
    assert data.eval_split().name == "dev"
    assert len(data.splits["dev"]) == 872


def test_missing_dir():
    with pytest.raises(DataError, match="does not exist"):
        load_task_data("/nonexistent/data")


def test_file_instead_of_dir(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("a\n")
    with pytest.raises(DataError, match="must be a directory") as e:
        load_task_data(f)
    assert str(tmp_path) in e.value.fix


def test_missing_train(tmp_path):
    write_split(tmp_path, "dev", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="no train.tsv") as e:
        load_task_data(tmp_path)
    assert "dev.tsv" in e.value.what


def test_missing_eval_split(tmp_path):
    write_split(tmp_path, "train", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="no dev.tsv or test.tsv"):
        load_task_data(tmp_path)


def test_misnamed_columns_are_listed(tmp_path):
    write_split(tmp_path, "train", "text_a\ttext_b\tsimilarity\na\tb\t1.0\n")
    write_split(tmp_path, "dev", "text_a\ttext_b\tsimilarity\na\tb\t1.0\n")
    with pytest.raises(DataError) as e:
        load_task_data(tmp_path)
    assert "['text_a', 'text_b', 'similarity']" in e.value.what
    assert e.value.where.endswith("train.tsv:1")


def test_empty_file(tmp_path):
    write_split(tmp_path, "train", "")
    write_split(tmp_path, "dev", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="is empty"):
        load_task_data(tmp_path)


def test_header_only(tmp_path):
    write_split(tmp_path, "train", "sentence\tlabel\n")
    write_split(tmp_path, "dev", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="no rows"):
        load_task_data(tmp_path)


def test_not_utf8(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "train.tsv").write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    write_split(tmp_path, "dev", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_task_data(tmp_path)


def test_bad_score_names_line(tmp_path):
    write_split(tmp_path, "train", "sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\thigh\n")
    write_split(tmp_path, "dev", "sentence1\tsentence2\tscore\na\tb\t1.0\n")
    with pytest.raises(DataError, match="not a number") as e:
        load_task_data(tmp_path)
    assert e.value.where.endswith("train.tsv:3")


def test_short_row_names_line(tmp_path):
    write_split(tmp_path, "train", "sentence1\tsentence2\tscore\na\tb\t1.0\nonly one field\n")
    write_split(tmp_path, "dev", "sentence1\tsentence2\tscore\na\tb\t1.0\n")
    with pytest.raises(DataError, match="row has 1 fields") as e:
        load_task_data(tmp_path)
    assert e.value.where.endswith("train.tsv:3")


def test_mixed_layouts(tmp_path):
    write_split(tmp_path, "train", "sentence\tlabel\nok\t1\n")
    write_split(tmp_path, "dev", "sentence1\tsentence2\tscore\na\tb\t1.0\n")
    with pytest.raises(DataError, match="looks like a sts file"):
        load_task_data(tmp_path)


def test_negative_label(tmp_path):
    write_split(tmp_path, "train", "sentence\tlabel\nok\t-1\n")
    write_split(tmp_path, "dev", "sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match="negative"):
        load_task_data(tmp_path)


def test_unlabeled_file(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("one\n\n two \n")
    assert read_unlabeled(f) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="holds no text"):
        read_unlabeled(tmp_path / "empty.txt")


def test_unlabeled_glue_folder_gives_train_texts_only(tmp_path):
    d = tmp_path / "sst2"
    write_split(d, "train", "sentence\tlabel\na fine film \t1\ndull\t0\n")
    write_split(d, "dev", "sentence\tlabel\nnever read\t1\n")
    assert read_unlabeled(d) == ["a fine film", "dull"]
    assert read_unlabeled(d / "train.tsv") == ["a fine film", "dull"]
    pairs = tmp_path / "pairs"
    write_split(pairs, "train", "sentence1\tsentence2\tscore\nleft\tright\t3.0\n")
    assert sorted(read_unlabeled(pairs)) == ["left", "right"]


def test_unlabeled_folder_without_train(tmp_path):
    write_split(tmp_path / "d", "dev", "sentence\tlabel\nx\t1\n")
    with pytest.raises(DataError, match="has no train.tsv to take unlabeled text from"):
        read_unlabeled(tmp_path / "d")
