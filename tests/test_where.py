"""--where expressions: parsing, the SQL they compile to (run for real), and injection attempts."""

import sqlite3

import pytest

from dbdict_fs.errors import UsageError
from dbdict_fs.index import Index
from dbdict_fs.where import compile_where, quote

ROWS = [
    # i, lr, model.arch, valid_err, dbdict.status, weird "na""me"
    (1, 0.1, "resnet", 0.3, "done", "x"),
    (2, 0.01, "resnet", 0.1, "done", None),
    (3, 0.01, "mlp", None, "ready", "it's"),
    (4, 0.001, "mlp-2", 0.5, "failed", None),
]
COLUMNS = ["i", "lr", "model.arch", "valid_err", "dbdict.status", 'we"ird']


@pytest.fixture
def index():
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE jobs ({', '.join(quote(c) for c in COLUMNS)})")
    conn.executemany(f"INSERT INTO jobs VALUES ({', '.join('?' * len(COLUMNS))})", ROWS)
    return Index(conn, "tree")


def ids(index, expr):
    return [r["i"] for r in index.where(expr)]


@pytest.mark.parametrize("expr, expected", [
    ("lr > 0.01", [1]),
    ("lr >= 0.01", [1, 2, 3]),
    ("lr = 0.01", [2, 3]),
    ("lr == 0.01 and model.arch == 'resnet'", [2]),
    ("lr != 0.01", [1, 4]),
    ("lr <> 0.01", [1, 4]),
    ("lr < .01", [4]),
    ("lr <= 1e-2", [2, 3, 4]),
    ("not lr < 0.1", [1]),
    ("(lr = 0.1 or lr = 0.001) and not model.arch = 'resnet'", [4]),
    ("model.arch in ('mlp', \"mlp-2\")", [3, 4]),
    ("model.arch not in ('mlp')", [1, 2, 4]),
    ("model.arch like 'mlp%'", [3, 4]),
    ("model.arch not like 'mlp%'", [1, 2]),
    ("valid_err is null", [3]),
    ("valid_err is not null and valid_err < 0.4", [1, 2]),
    ("valid_err = null", [3]),
    ("valid_err != null", [1, 2, 4]),
    ("status = 'done'", [1, 2]),
    ("STATUS = 'done' AND I > 1", [2]),
    ("i in (-1, 2, 3.0)", [2, 3]),
    ("i > -2 and i < 3", [1, 2]),
    ("`we\"ird` = 'it''s'", [3]),
    ("`we\"ird` = \"it's\"", [3]),
    ("i = 1 or true", [1, 2, 3, 4]),
    ("false", []),
    ("valid_err", [1, 2, 4]),
])
def test_expressions(index, expr, expected):
    assert ids(index, expr) == expected


def test_values_are_parameters_never_sql(index):
    sql, params = compile_where("model.arch = 'x'' or 1=1 --' and lr > 0.5", index.resolve)
    assert "'" not in sql and "1=1" not in sql
    assert params == ["x' or 1=1 --", 0.5]
    assert ids(index, "model.arch = 'x'' or 1=1 --'") == []


@pytest.mark.parametrize("expr", [
    "lr = 1; drop table jobs",
    "lr = 1 -- comment",
    "lr = 1 /* c */",
    "lr = (select 1)",
    "lr = 1) or (1 = 1",
    "lr = 1 union select * from sqlite_master",
    "lr = x'00'",
    "lr = @p",
    "lr = ?",
    "lr in (select i from jobs)",
    "lr + 1 > 2",
    "lr = 'unterminated",
    "",
    "   ",
    "and",
    "lr >",
    "(lr = 1",
    "lr is 3",
    "lr > null",
    "lr in ()",
    "(" * 200 + "lr = 1" + ")" * 200,
])
def test_bad_and_hostile_expressions_are_clean_usage_errors(index, expr):
    with pytest.raises(UsageError) as info:
        index.where(expr)
    assert str(info.value).startswith("--where") or "unknown column" in str(info.value)
    assert index.sql("SELECT count(*) AS n FROM jobs") == [{"n": 4}]


def test_unknown_columns_suggest_close_names(index):
    with pytest.raises(UsageError, match=r"unknown column 'valid_er'; did you mean valid_err"):
        index.where("valid_er < 1")
    with pytest.raises(UsageError, match="did you mean model.arch"):
        index.where("model.arc = 'x'")
    with pytest.raises(UsageError, match="unknown column 'zzz'"):
        index.where("zzz = 1")


def test_keywords_are_case_insensitive_and_strings_unescape(index):
    assert ids(index, "LR > 0.01 OR Model.Arch Like 'MLP-%'") == [1, 4]
    _, params = compile_where(r"model.arch = 'a\'b\\c\n'", index.resolve)
    assert params == ["a'b\\c\n"]


@pytest.mark.parametrize("expr, expected", [
    # `and` binds tighter than `or`, on either side, as in SQL and Python
    ("i = 1 or i = 2 and lr = 0.1", [1]),
    ("i = 2 and lr = 0.1 or i = 1", [1]),
    ("i = 1 or i = 4 and valid_err > 0.4 or i = 3", [1, 3, 4]),
    ("(i = 1 or i = 2) and lr = 0.1", [1]),
    ("not i = 1 and lr = 0.01", [2, 3]),  # `not` binds tighter than `and`
])
def test_and_binds_tighter_than_or(index, expr, expected):
    assert ids(index, expr) == expected
