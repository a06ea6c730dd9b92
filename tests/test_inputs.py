"""Malformed inputs, through the command line as a user meets them: every reader, every kind of bad
file, one line naming the file, the row and the problem, exit status 2, no traceback.

The named cases are the ones people hit (invalid UTF-8, a file cut short, a ranking that is not a
permutation, ...); the generated ones (hypothesis) throw arbitrary bytes and arbitrary JSON rows at
the readers, whose only allowed answers are rows or a ``DataError`` of one line.
"""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preftune.cli import main
from preftune.data import DataError, load_comparisons, load_prompts, load_sft, load_texts, read_rows
from preftune.label.store import read_tasks
from preftune.world import lists

PAIR = {"prompt": "Human: hi\n\nAssistant:", "chosen": " hello.", "rejected": " go away."}
RANKING = {"prompt": "Human: hi\n\nAssistant:", "completions": [" a.", " b.", " c."], "ranking": [2, 0, 1]}
SFT = {"prompt": "Human: hi\n\nAssistant:", "completion": " hello."}
SAMPLES = {"prompt": lists.prompts(1, seed=0)[0]["prompt"], "completions": [" a.", " b."]}
TASK = {"prompt": "Human: hi\n\nAssistant:", "a": " a.", "b": " b."}


# reader: (command line with {data} and {out}, a good row)
READERS = {
    "sft": (["sft", "--model", "{model}", "--data", "{data}", "--train.out", "{out}"], SFT),
    "pairs": (["dpo", "--model", "{model}", "--data", "{data}", "--train.out", "{out}"], PAIR),
    "rankings": (["reward", "--model", "{model}", "--data", "{data}", "--train.out", "{out}"], RANKING),
    "prompts": (["generate", "--model", "{model}", "--prompts", "{data}"], {"prompt": "Human: hi\n\nAssistant:"}),
    "corpus": (["pretrain", "--data", "{data}", "--train.out", "{out}"], {"text": "apples and pears."}),
    "samples": (["annotate", "--samples", "{data}", "--simulated", "--out", "{out}/labels.jsonl"], SAMPLES),
    "tasks": (["label", "serve", "--tasks", "{data}", "--db", "{out}/labels.db"], TASK),
}


def _lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# (reader, file name, contents, where the error points, what it says). Row 2 is the bad one where it can be.
CASES = [
    ("sft", "d.jsonl", _lines(SFT, b'{"prompt": "caf\xff", "completion": " x"}'), 2, "not UTF-8 text: byte 0xff"),
    ("pairs", "d.jsonl", _lines(PAIR) + b'{"prompt": "p", "chosen": " a", "rej', 2, "no line end: is the file cut short?"),
    ("pairs", "d.jsonl", _lines(PAIR, b"[1, 2, 3]"), 2, "expected a JSON object, got list"),
    ("pairs", "d.jsonl", _lines(PAIR, b'"just a string"'), 2, "expected a JSON object, got str"),
    ("pairs", "d.jsonl", _lines(PAIR, b"null"), 2, "expected a JSON object, got NoneType"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "rejected": PAIR["chosen"]}), 2, "'chosen' and 'rejected' are the same"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "chosen": 7}), 2, "field 'chosen' must be a string, got int"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "prompt": ""}), 2, "field 'prompt' is empty"),
    (
        "pairs",
        "d.jsonl",
        _lines(PAIR, b'{"prompt": "p", "chosen": " a", "rejected": " b", "strength": NaN}'),
        2,
        "'strength' must be a number in [0, 1], got nan",
    ),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "strength": -0.5}), 2, "'strength' must be a number in [0, 1]"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "strength": True}), 2, "'strength' must be a number in [0, 1], got True"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "strength": "0.5"}), 2, "'strength' must be a number in [0, 1], got '0.5'"),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "chosen_ended": "yes"}), 2, "'chosen_ended' and 'rejected_ended' must be booleans"),
    ("pairs", "d.jsonl", _lines(PAIR, {"prompt": "p", "chosen": " a"}), 2, "missing field 'rejected'"),
    (
        "pairs",
        "d.jsonl",
        _lines(PAIR, {**PAIR, "chosen": [{"role": "assistant"}]}),
        2,
        "chosen[0] must be an object with string 'role' and 'content'",
    ),
    (
        "pairs",
        "d.jsonl",
        _lines(PAIR, {**PAIR, "prompt": [{"role": "wizard", "content": "hi"}], "chosen": [], "rejected": []}),
        2,
        "must be a non-empty list of messages",
    ),
    (
        "pairs",
        "d.jsonl",
        _lines(PAIR, {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}),
        2,
        "must start with the same prompt messages",
    ),
    ("pairs", "d.jsonl", _lines(PAIR, {**PAIR, "annotator": ["x"]}), 2, "field 'annotator' must be a string, got list"),
    ("pairs", "d.json", json.dumps([PAIR, PAIR]).encode()[:-3], 1, "invalid JSON"),
    ("pairs", "d.json", json.dumps({"rows": [PAIR]}).encode(), 1, "must hold a list of objects, not a dict"),
    ("pairs", "d.json", json.dumps([PAIR, 5]).encode(), "record 2", "expected an object, got int"),
    ("pairs", "d.parquet", None, "row 1", "field 'chosen' must be a string, got int"),  # wrong schema: written below
    ("pairs", "d.parquet", b"PAR1 this is not parquet PAR1", "file", "not a readable Parquet file"),
    (
        "rankings",
        "d.jsonl",
        _lines(RANKING, {**RANKING, "ranking": [0, 0, 1]}),
        2,
        "'ranking' must be a permutation of 0..2, got [0, 0, 1]",
    ),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "ranking": [0, 1]}), 2, "'ranking' must be a permutation of 0..2"),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "ranking": [0.0, 1.0, 2.0]}), 2, "'ranking' must be a permutation of 0..2"),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "completions": [" a.", " b.", " a."]}), 2, "completions 0 and 2 are the same"),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "completions": [" a."], "ranking": [0]}), 2, "at least 2 strings"),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "ended": [True, False]}), 2, "'ended' must be a list of 3 booleans"),
    ("rankings", "d.jsonl", _lines(RANKING, {**RANKING, "ranking": list(range(10_000))}), 2, "..."),  # a long value is quoted short
    ("sft", "d.jsonl", _lines(SFT, {"prompt": "p", "completion": ""}), 2, "field 'completion' is empty"),
    ("sft", "d.jsonl", _lines(SFT, {"messages": [{"role": "user", "content": "hi"}]}), 2, "the last message must be the assistant's"),
    ("sft", "d.jsonl", _lines(SFT, {"messages": "hi"}), 2, "'messages' must be a non-empty list of messages"),
    (
        "sft",
        "d.jsonl",
        _lines(SFT, {"prompt": [{"role": "user", "content": "hi"}], "completion": "x"}),
        2,
        "'completion' must be a non-empty list",
    ),
    ("sft", "d.jsonl", _lines(SFT, {"question": "q"}), 2, "expected 'prompt' and 'completion', or 'messages'"),
    ("sft", "d.jsonl", b"\n\n  \n", 1, "the file holds no rows"),
    ("prompts", "d.jsonl", _lines({"prompt": "p"}, {"prompt": None}), 2, "field 'prompt' must be a string, got NoneType"),
    (
        "prompts",
        "d.jsonl",
        _lines({"prompt": "p"}, b"{" + b'"prompt": "' + b"x" * 2_000_000 + b'"'),
        2,
        "invalid JSON",
    ),  # a huge broken line
    ("corpus", "d.jsonl", _lines({"text": "a"}, {"text": 3.5}), 2, "field 'text' must be a string, got float"),
    (
        "corpus",
        "d.jsonl",
        b"\xef\xbb\xbf" + _lines({"text": "a"}) + b"\xef\xbb\xbf" + _lines({"text": "b"}),
        2,
        "invalid JSON",
    ),  # a BOM mid-file
    (
        "samples",
        "d.jsonl",
        _lines(SAMPLES, {"prompt": "p", "completions": [" a"]}),
        2,
        "expected {'prompt', 'completions': [at least 2 strings]}",
    ),
    ("samples", "d.jsonl", _lines(SAMPLES, {**SAMPLES, "prompt": "Human: sing\n\nAssistant:"}), 2, "not a prompt of the lists world"),
    ("tasks", "d.jsonl", _lines(TASK, {"prompt": "p", "a": "x"}), 2, "expected string fields 'a' and 'b'"),
    ("tasks", "d.jsonl", _lines(TASK, {"prompt": "", "a": "x", "b": "y"}), 2, "missing or empty string field 'prompt'"),
    (
        "tasks",
        "d.jsonl",
        _lines(TASK, {"prompt": "p", "completions": True}),
        2,
        "or 'completions' with at least 2 strings",
    ),  # found by hypothesis
]


@pytest.mark.parametrize("reader, name, contents, where, problem", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_malformed_input_is_one_line_naming_file_row_and_problem_with_exit_status_2(
    tmp_path, capsys, saved_policy, reader, name, contents, where, problem
):
    data, out = tmp_path / name, tmp_path / "out"
    if contents is None:
        pq.write_table(pa.Table.from_pylist([{**PAIR, "chosen": 3}, {**PAIR, "chosen": 4}]), data)
    else:
        data.write_bytes(contents)
    out.mkdir()
    (out / "keep.txt").write_text("written before")  # what is already there survives
    argv, _ = READERS[reader]
    code = main([a.format(model=saved_policy, data=data, out=out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    command = argv[0] if argv[0] != "label" else "label serve"
    assert err.startswith(f"preftune {command}: error: {data}:{where}: "), err
    assert problem in err, err
    assert len(err) < 400, err
    assert (out / "keep.txt").read_text() == "written before"


def test_what_is_not_an_error_is_read_the_same(tmp_path):
    """A BOM, CRLF line ends and blank lines are not problems: the rows are those of the plain file."""
    rows = [PAIR, {**PAIR, "chosen": " hi!", "strength": 1}]
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(_lines(*rows))
    odd = tmp_path / "odd.jsonl"
    odd.write_bytes(b"\xef\xbb\xbf" + _lines(*rows).replace(b"\n", b"\r\n\r\n"))
    assert load_comparisons(odd) == load_comparisons(plain) and len(load_comparisons(plain)) == 2
    # a pair of the same text where one was cut off and one ended is a real preference, kept
    same = tmp_path / "same.jsonl"
    same.write_bytes(_lines({**PAIR, "rejected": PAIR["chosen"], "rejected_ended": False}))
    assert load_comparisons(same)[0].ended == (True, False)


READ = {"sft": load_sft, "pairs": load_comparisons, "prompts": load_prompts, "corpus": load_texts, "tasks": read_tasks}


def _one_line_error_or_rows(load, path) -> None:
    try:
        load(path)
    except DataError as e:
        text = str(e)
        assert text.startswith(f"{path}:") and "\n" not in text and len(text) < 400, text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["prompt", "completion", "chosen", "rejected", "completions", "ranking", "strength", "messages", "text", "a", "b", "ended"]
rows = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reader=st.sampled_from(sorted(READ)), lines=st.lists(rows, min_size=1, max_size=4))
def test_generated_rows_give_rows_or_one_line_errors(tmp_path, reader, lines):
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    _one_line_error_or_rows(READ[reader], path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reader=st.sampled_from(sorted(READ)), raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_generated_bytes_give_rows_or_one_line_errors(tmp_path, reader, raw, suffix):
    path = tmp_path / f"gen{suffix}"
    path.write_bytes(raw)
    _one_line_error_or_rows(READ[reader], path)


def test_a_nan_in_rows_that_are_otherwise_fine_is_refused_not_trained_on(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps({**PAIR, "strength": math.nan}) + "\n")  # json.dumps writes NaN, json.loads reads it
    with pytest.raises(DataError, match=r"nan\.jsonl:1: 'strength' must be a number in \[0, 1\], got nan"):
        load_comparisons(path)
    assert [w for w, _ in read_rows(path)] == [1]
