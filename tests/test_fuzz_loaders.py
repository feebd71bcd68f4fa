"""Fuzzed loaders: every malformed JSONL line is one DataError naming ``file:line``; saves leave nothing half-written.

Each example writes some good rows, then one bad row (truncated, a key missing, a
value of the wrong type, invalid UTF-8, a lone surrogate, nesting deeper than the
JSON parser's stack, random bytes), then more good rows. The loader must raise
:class:`DataError` naming exactly that line, or, for random bytes that happen to be
blank or a valid row, load. The labeling import must leave the database as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agents.demonstrations import load_demonstrations
from reward_models import (
    Comparison,
    PromptResponses,
    Ranking,
    load_collection,
    load_preferences,
    save_preferences,
)
from reward_models.labeling import LabelStore
from rlhf_common.io import DataError, atomic_path, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from text_env.char_tokenizer import char_tokenizer
from text_env.prompts import load_prompts

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
TOKENIZER = char_tokenizer("abcdefghijklmnopqrstuvwxyz ")
MAX_MESSAGE = 2_000  # an error names the problem, it does not echo a huge line back

# ---- good rows, per loader ------------------------------------------------------------------
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
distinct = st.lists(text, min_size=2, max_size=4, unique=True)


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


GOOD_ROWS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "prompts": st.builds(lambda p: {"prompt": p}, text),
    "demonstrations": st.one_of(
        st.builds(lambda p, r: {"prompt": p, "response": r}, text, text),
        st.builds(
            lambda u, a: {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}, text, text
        ),
    ),
    "preferences": st.one_of(
        st.builds(lambda p, rs: {"prompt": p, "chosen": rs[0], "rejected": rs[1]}, text, distinct),
        st.builds(lambda p, rs: {"prompt": p, "responses": rs}, text, distinct),
        st.builds(lambda h, rs: {"chosen": f"\n\nHuman: {h}\n\nAssistant: {rs[0]}",  # HH-RLHF
                                 "rejected": f"\n\nHuman: {h}\n\nAssistant: {rs[1]}"}, text, distinct),
    ),
    "conversations": st.one_of(  # TRL conversational preferences, explicit and implicit prompt
        st.builds(lambda u, rs: {"prompt": [{"role": "user", "content": u}], "chosen": [assistant(rs[0])],
                                 "rejected": [assistant(rs[1])]}, text, distinct),
        st.builds(lambda u, rs: {"chosen": [{"role": "user", "content": u}, assistant(rs[0])],
                                 "rejected": [{"role": "user", "content": u}, assistant(rs[1])]}, text, distinct),
    ),
    "collection": st.one_of(
        st.builds(lambda p, rs: {"prompt": p, "responses": rs}, text, st.lists(text, min_size=1, max_size=4)),
        st.builds(lambda p, r: {"prompt": p, "response": r}, text, text),
    ),
    "label_import": st.builds(lambda p, rs: {"prompt": p, "responses": rs}, text, distinct),
}
MESSAGE_LISTS = ("messages", "prompt", "chosen", "rejected")
"""Keys that hold {"role", "content"} message lists in the kinds that have list values there."""

# Keys whose absence or wrong type makes a row bad, and the type each must have.
REQUIRED = {
    "prompts": {"prompt": str},
    "demonstrations": {"prompt": str, "response": str, "messages": list},
    "preferences": {"prompt": str, "chosen": str, "rejected": str, "responses": list},
    "conversations": {"prompt": list, "chosen": list, "rejected": list},
    "collection": {"prompt": str, "responses": list, "response": str},
    "label_import": {"prompt": str, "responses": list},
}


def _import_labels(path: Path, db: Path) -> Any:
    with LabelStore(db) as store:
        return store.import_items(path)


LOADERS: dict[str, Callable[[Path, Path], Any]] = {
    "prompts": lambda path, tmp: load_prompts(path),
    "demonstrations": lambda path, tmp: load_demonstrations(path, TOKENIZER, max_length=64),
    "preferences": lambda path, tmp: load_preferences(path),
    "conversations": lambda path, tmp: load_preferences(path, TOKENIZER),
    "collection": lambda path, tmp: load_collection(path),
    "label_import": lambda path, tmp: _import_labels(path, tmp / "labels.sqlite"),
}

# ---- bad lines ------------------------------------------------------------------------------
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
INVALID_UTF8 = [b"\xff", b"\xfe\xfe", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


def dumps(row: Any) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


@st.composite
def bad_line(draw: st.DrawFn, kind: str) -> tuple[bytes, bool]:
    """``(line bytes, surely_bad)``: random bytes may by chance be blank or a valid row."""
    row = draw(GOOD_ROWS[kind])
    how = draw(st.sampled_from(
        ["truncated", "missing_key", "wrong_type", "bad_list_item", "invalid_utf8", "lone_surrogate",
         "not_an_object", "deep_nesting", "huge_number", "random_bytes"]
    ))
    required = [k for k in REQUIRED[kind] if k in row]
    if how == "truncated":
        raw = dumps(row)
        return raw[: draw(st.integers(1, len(raw) - 1))], True
    if how == "missing_key":
        key = draw(st.sampled_from(required))
        del row[key]
        return dumps(row), True
    if how == "wrong_type":
        key = draw(st.sampled_from(required))
        want = REQUIRED[kind][key]
        row[key] = draw(json_value.filter(lambda v: not isinstance(v, want)))
        return dumps(row), True
    if how == "bad_list_item":
        lists = [k for k in required if REQUIRED[kind][k] is list]
        assume(lists)
        key = draw(st.sampled_from(lists))
        items = row[key]
        items[draw(st.integers(0, len(items) - 1))] = draw(json_value.filter(
            lambda v: not isinstance(v, dict if key in MESSAGE_LISTS else str)
        ))
        return dumps(row), True
    if how == "invalid_utf8":
        raw = dumps(row)
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(INVALID_UTF8)) + raw[at:], True
    if how == "lone_surrogate":
        # Valid JSON ("\ud800" is a legal escape) that no UTF-8 text, tokenizer or database can hold.
        surrogate = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udbff"]))
        conversation = next((k for k in MESSAGE_LISTS if isinstance(row.get(k), list)), None)
        if conversation:
            row[conversation][-1]["content"] = "\x00SURROGATE\x00"
        else:
            row[draw(st.sampled_from([k for k in required if REQUIRED[kind][k] is str]))] = "\x00SURROGATE\x00"
        return dumps(row).replace(b"\\u0000SURROGATE\\u0000", surrogate.encode()), True
    if how == "not_an_object":
        return dumps(draw(json_value.filter(lambda v: not isinstance(v, dict)))), True
    if how == "deep_nesting":
        depth = draw(st.sampled_from([5_000, 100_000]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        where = draw(st.sampled_from(["top", "value"]))
        nested = opener * depth
        return (nested if where == "top" else b'{"prompt": ' + nested), True
    if how == "huge_number":
        # Python refuses to parse integers of more than 4300 digits (CVE-2020-10735): a ValueError, not JSON's.
        key = draw(st.sampled_from(required))
        row[key] = 0
        return dumps(row).replace(b": 0", b": " + b"7" * draw(st.sampled_from([4301, 100_000])), 1), True
    return draw(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b)), False


def fuzz_file(kind: str) -> st.SearchStrategy[tuple[list[bytes], int, bool]]:
    """Lines of a file with one bad line: ``(lines, bad line number (1-based), surely_bad)``."""
    good = st.lists(GOOD_ROWS[kind].map(dumps), min_size=1, max_size=4)

    def build(before: list[bytes], bad: tuple[bytes, bool], after: list[bytes]) -> tuple[list[bytes], int, bool]:
        return [*before, bad[0], *after], len(before) + 1, bad[1]

    return st.builds(build, good, bad_line(kind), st.lists(GOOD_ROWS[kind].map(dumps), max_size=3))


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def snapshot(db: Path) -> tuple[list[Any], ...]:
    with sqlite3.connect(db) as conn:
        return tuple(conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("items", "labels", "meta"))


# ---- the fuzz tests -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(LOADERS))
def test_one_bad_line_is_a_data_error_naming_that_line(kind, tmp_path_factory):
    @FUZZ
    @given(case=fuzz_file(kind))
    def check(case: tuple[list[bytes], int, bool]) -> None:
        lines, bad_no, surely_bad = case
        tmp = tmp_path_factory.mktemp(kind)
        path = write_lines(tmp / "data.jsonl", lines)
        try:
            result = LOADERS[kind](path, tmp)
        except DataError as e:
            message = str(e)
            assert message.startswith(f"{path}:{bad_no}: "), message[:300]
            assert len(message) < MAX_MESSAGE, message[:300]
            if kind == "label_import":
                with LabelStore(tmp / "labels.sqlite") as store:
                    assert store.count_items() == 0  # nothing imported
            return
        assert not surely_bad, f"line {bad_no} ({lines[bad_no - 1][:80]!r}) was accepted: {result!r}"[:500]

    check()


@pytest.mark.parametrize("kind", list(LOADERS))
@FUZZ
@given(content=st.binary(max_size=300))
def test_random_bytes_load_or_raise_a_data_error_naming_the_file(kind, content, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(kind)
    path = tmp / "data.jsonl"
    path.write_bytes(content)
    try:
        LOADERS[kind](path, tmp)
    except DataError as e:
        assert str(e).startswith(f"{path}:"), str(e)[:300]


@FUZZ
@given(case=fuzz_file("label_import"))
def test_failed_label_import_changes_nothing_in_a_database_in_use(case, tmp_path_factory):
    lines, bad_no, _ = case
    tmp = tmp_path_factory.mktemp("db")
    db = tmp / "labels.sqlite"
    with LabelStore(db) as store:
        store.import_items(write_lines(tmp / "first.jsonl", [dumps({"prompt": "p", "responses": ["x", "y"]})]))
        store.add_label(1, "ann", [1, 0], "rank")
    before = snapshot(db)
    with LabelStore(db) as store:
        try:
            store.import_items(write_lines(tmp / "more.jsonl", lines))
        except DataError as e:
            assert str(e).startswith(f"{tmp / 'more.jsonl'}:{bad_no}: ")
            assert snapshot(db) == before  # all or nothing
        else:
            assert snapshot(db)[1:] == before[1:]  # labels untouched either way


# ---- huge lines -----------------------------------------------------------------------------
HUGE = 1_000_000  # characters: a 1 MB line


def huge_good(kind: str) -> dict[str, Any]:
    big = "a" * HUGE
    return {
        "prompts": {"prompt": big},
        "demonstrations": {"prompt": "a", "response": big[: HUGE // 10]},  # tokenised: ~1 s per 300k characters
        "preferences": {"prompt": big, "chosen": "a", "rejected": "b"},
        "conversations": {"prompt": [{"role": "user", "content": big}], "chosen": [assistant("a")],
                          "rejected": [assistant("b")]},
        "collection": {"prompt": big, "response": "a"},
        "label_import": {"prompt": big, "responses": ["a", "b"]},
    }[kind]


BAD_HUGE = {
    "truncated": lambda row: dumps(row)[:-5],
    "huge-wrong-type": lambda row: dumps({**row, "prompt": ["x" * HUGE]}),
    "thousands-of-huge-keys": lambda row: dumps({f"k{'x' * 1000}{i}": i for i in range(3000)}),
    "invalid-utf8": lambda row: dumps(row)[: HUGE // 2] + b"\xff" + dumps(row)[HUGE // 2 :],
}


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        pytest.param(kind, bad, id=f"{bad}-{kind}",
                     )
        for kind in LOADERS
        for bad in BAD_HUGE
    ],
)
def test_huge_lines_load_or_fail_with_a_short_message(kind, bad, tmp_path):
    good = huge_good(kind)
    path = write_lines(tmp_path / "big.jsonl", [dumps(good), BAD_HUGE[bad](good)])
    with pytest.raises(DataError) as err:
        LOADERS[kind](path, tmp_path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert len(str(err.value)) < MAX_MESSAGE, f"{len(str(err.value))} characters: {str(err.value)[:200]}..."
    write_lines(path, [dumps(good)] * (2 if kind in ("prompts", "collection") else 1))
    LOADERS[kind](path, tmp_path)


def test_blank_lines_are_skipped_and_numbering_counts_them(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\n{"prompt": "a"}\n  \r\n\t\n{"prompt": 1}\n')
    with pytest.raises(DataError, match=rf"^{path}:5: 'prompt' must be a string"):
        load_prompts(path)
    path.write_bytes(b'{"prompt": "a"}\r\n{"prompt": "b"}')  # CRLF and no final newline
    assert load_prompts(path) == ["a", "b"]


def test_missing_and_empty_files(tmp_path):
    for kind, loader in LOADERS.items():
        with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.jsonl'}: no such file"):
            loader(tmp_path / "nope.jsonl", tmp_path)
        empty = tmp_path / f"{kind}.jsonl"
        empty.write_bytes(b"\n \n")
        with pytest.raises(DataError, match=rf"^{empty}: "):
            loader(empty, tmp_path)


# ---- failed saves leave nothing behind ----------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "save",
    [
        pytest.param(lambda p: write_jsonl_atomic(p, [{"ok": 1}, {"bad": object()}]), id="jsonl-unserialisable"),
        pytest.param(lambda p: write_jsonl_atomic(p, [{"ok": "x" * 100_000}, {"bad": "\ud800"}]), id="jsonl-surrogate"),
        pytest.param(lambda p: write_json_atomic(p, {"bad": {1, 2}}), id="json-unserialisable"),
        pytest.param(lambda p: save_preferences(p, [Comparison("p", "a", "b"), Ranking("p\ud800", ("a", "b"))]),
                     id="preferences-surrogate"),
    ],
)
def test_a_failed_file_save_keeps_the_old_file_and_leaves_no_temporary(save, tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old contents\n")
    with pytest.raises((TypeError, UnicodeEncodeError, ValueError)):
        save(target)
    assert target.read_text() == "old contents\n"
    assert leftovers(tmp_path) == ["out.jsonl"]
    target.unlink()
    with pytest.raises((TypeError, UnicodeEncodeError, ValueError)):
        save(target)
    assert leftovers(tmp_path) == []


def test_a_failed_folder_save_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model"
    save_dir_atomic(target, lambda d: (d / "weights.bin").write_bytes(b"old"))

    def half_then_fail(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"new but unfinished")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_dir_atomic(target, half_then_fail)
    assert leftovers(tmp_path) == ["model"] and (target / "weights.bin").read_bytes() == b"old"
    save_dir_atomic(target, lambda d: (d / "weights.bin").write_bytes(b"new"))
    assert leftovers(tmp_path) == ["model"] and leftovers(target) == ["weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"new"


def test_stale_temporaries_of_a_killed_writer_are_swept(tmp_path):
    """A writer killed mid-save leaves its temporary; the next save removes it (its process is gone)."""
    pid = os.fork()
    if pid == 0:  # a child that dies inside atomic_path, as kill -9 would leave it
        with atomic_path(tmp_path / "ckpt") as tmp:
            tmp.mkdir()
            (tmp / "big").write_bytes(b"x" * 1000)
            os._exit(0)
    os.waitpid(pid, 0)
    assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].startswith(".ckpt.")
    save_dir_atomic(tmp_path / "ckpt", lambda d: (d / "f").write_text("new"))
    assert leftovers(tmp_path) == ["ckpt"]


def test_collections_and_preferences_round_trip_exotic_text(tmp_path):
    """What the fuzzers feed is also what real data holds: control characters, U+2028, NUL, emoji."""
    weird = ["line\u2028sep", "nul\x00byte", "tab\tand\r\n", "emoji \U0001f600", "rtl \u202e", ""]
    prefs = [Ranking(w, tuple(f"{w}{i}" for i in range(3))) for w in weird]
    save_preferences(tmp_path / "p.jsonl", prefs)
    assert load_preferences(tmp_path / "p.jsonl") == prefs
    write_jsonl_atomic(tmp_path / "c.jsonl", [{"prompt": w, "responses": [w + "a", w + "b"]} for w in weird])
    assert load_collection(tmp_path / "c.jsonl") == [PromptResponses(w, (w + "a", w + "b")) for w in weird]
    with LabelStore(tmp_path / "db.sqlite") as store:
        assert store.import_items(tmp_path / "c.jsonl").added == len(weird)
        assert [store.item(i + 1).prompt for i in range(len(weird))] == weird
