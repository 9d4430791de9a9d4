"""metis.io.tables: one reader for parquet / folder / JSON / JSONL, bad rows counted, bounded skips."""

from __future__ import annotations

import json
import pickle

import pytest
from public_layouts import write_parquet

from metis.io.tables import RowError, SkippedRows, TooManySkipped, open_table, read_rows


def test_jsonl_rows_are_read_on_access_and_bad_lines_are_row_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": "x"}\n{"a": \n[1, 2]\n{"a": 5}\n')
    table = open_table(path)
    assert len(table) == 5 and table.columns == ["a", "b"] and table.folder == tmp_path
    assert table.name == "rows.jsonl" and len(table.rows.offsets) == 5  # offsets only: rows are parsed on access
    assert table[0] == {"a": 1} and table[4] == {"a": 5}
    with pytest.raises(RowError, match="line 4 of rows.jsonl is not JSON") as err:
        table[2]
    assert err.value.kind == "unreadable_row"
    with pytest.raises(RowError, match="is a list, not an object"):
        table[3]
    with pytest.raises(IndexError):
        table[5]
    assert pickle.loads(pickle.dumps(table))[4] == {"a": 5}  # DataLoader workers
    assert len(open_table(path, limit=2)) == 2


def test_json_array_parquet_file_and_folder(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    assert [r["x"] for r in open_table(tmp_path / "a.json")] == [1, 2]
    (tmp_path / "broken.json").write_text('[{"x": 1}, ')
    with pytest.raises(ValueError, match="broken.json is not a valid JSON array"):
        open_table(tmp_path / "broken.json")
    folder = tmp_path / "pq"
    folder.mkdir()
    write_parquet(folder / "train-0.parquet", [{"x": 1}, {"x": 2}])
    write_parquet(folder / "train-1.parquet", [{"x": 3}])
    table = open_table(folder)
    assert sorted(r["x"] for r in table) == [1, 2, 3] and table.folder == folder and table.name == "pq"
    one = open_table(folder / "train-0.parquet", limit=1)
    assert len(one) == 1 and one.name == "pq/train-0.parquet" and one.folder == folder
    with pytest.raises(FileNotFoundError):
        open_table(tmp_path / "missing.parquet")


def test_skipped_rows_counts_lists_and_stops_only_past_the_bound(tmp_path):
    rows = [{"v": "1"}, {"v": "x"}, {"v": "2"}, {"w": 1}, {"v": "3"}]

    def convert(row):
        if "v" not in row:
            raise RowError("no_v", "row has no v")
        return int(row["v"])  # ValueError for "x": counted as convert_error

    skips = SkippedRows("numbers", max_fraction=0.4, file=tmp_path / "skipped_rows.jsonl", bound_key="data.bound")
    assert [v for _, v in read_rows(rows, convert, skips)] == [1, 2, 3]
    assert skips.finish(len(rows)) == {"convert_error": 1, "no_v": 1}
    listed = [json.loads(line) for line in (tmp_path / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in listed] == [(1, "convert_error"), (3, "no_v")]
    assert "ValueError" in listed[0]["detail"]
    strict = SkippedRows("numbers", max_fraction=0.2, bound_key="data.bound")
    list(read_rows(rows, convert, strict))
    with pytest.raises(TooManySkipped, match=r"2 of 5 rows are unusable .* more than data.bound=0.2"):
        strict.finish(len(rows))
