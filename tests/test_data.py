import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preftune.data import (
    Comparison,
    DataError,
    Ranking,
    collate,
    encode,
    load_comparisons,
    load_prompts,
    load_sft,
    render_conversation,
    split_transcript,
)


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD_PAIR = {"prompt": "Human: hi\n\nAssistant:", "chosen": " hello.", "rejected": " go away."}


@pytest.mark.parametrize(
    "loader, bad, problem",
    [
        (load_sft, "{not json", "invalid JSON"),
        (load_sft, "[1, 2]", "expected a JSON object"),
        (load_sft, {"prompt": "p"}, "missing field 'completion'"),
        (load_sft, {"prompt": "p", "completion": 3}, "'completion' must be a string"),
        (load_sft, {"prompt": "p", "completion": ""}, "'completion' is empty"),
        (load_sft, {"text": "hello"}, "expected 'prompt' and 'completion', or 'messages'"),
        (load_sft, {"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant's"),
        (load_sft, {"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
        (load_comparisons, {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        (load_comparisons, {"chosen": "Sure.", "rejected": "No."}, "must begin with the same prompt"),
        (
            load_comparisons,
            {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
            "differ before the last Assistant turn",
        ),
        (load_comparisons, {"prompt": "p", "completions": ["a", "b"], "ranking": [0, 0]}, "must be a permutation"),
        (load_comparisons, {"prompt": "p", "completions": ["a"], "ranking": [0]}, "at least 2 strings"),
        (load_comparisons, {**GOOD_PAIR, "strength": 1.5}, "'strength' must be a number in [0, 1]"),
        (load_comparisons, {**GOOD_PAIR, "annotator": 7}, "'annotator' must be a string"),
        (load_prompts, {"question": "q"}, "missing field 'prompt'"),
    ],
)
def test_malformed_row_names_file_line_and_problem(tmp_path, loader, bad, problem):
    good = {"prompt": "p", "completion": " c"} if loader is not load_comparisons else GOOD_PAIR
    path = _write(tmp_path / "data.jsonl", [good, "", good, bad, good])  # the bad row is on line 4
    with pytest.raises(DataError) as e:
        loader(path)
    assert str(e.value).startswith(f"{path}:4: ")
    assert problem in str(e.value)


def test_json_and_parquet_readers_and_their_error_locations(tmp_path):
    rows = [{"prompt": "p1", "completion": " c1"}, {"prompt": "p2", "completion": " c2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert (
        load_sft(tmp_path / "d.json")
        == load_sft(tmp_path / "d.parquet")
        == [load_sft(_write(tmp_path / "d.jsonl", rows))[i] for i in range(2)]
    )
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"prompt": "p"}]))
    with pytest.raises(DataError, match=r"bad\.json:record 2: missing field 'completion'"):
        load_sft(tmp_path / "bad.json")
    pq.write_table(pa.Table.from_pylist([rows[0], {"prompt": "p", "completion": None}]), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet:row 2: field 'completion' must be a string"):
        load_sft(tmp_path / "bad.parquet")


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no rows"):
        load_prompts(_write(tmp_path / "e.jsonl", []))


def test_hh_rlhf_multi_turn_prompt_extraction(tmp_path):
    shared = "\n\nHuman: Name 2 fruits.\n\nAssistant: apple, pear.\n\nHuman: And 2 more?\n\nAssistant:"
    row = {"chosen": shared + " plum, kiwi.", "rejected": shared + " dog."}
    (c,) = load_comparisons(_write(tmp_path / "hh.jsonl", [row]))
    assert c == Comparison(shared, " plum, kiwi.", " dog.")
    # the split is at the *last* Assistant turn, even when a completion mentions "Assistant:" mid-line
    assert split_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d") == (
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:",
        " d",
    )


def test_rankings_and_metadata_are_read(tmp_path):
    rows = [
        {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1], "annotator": "ann1", "group": "g"},
        {**GOOD_PAIR, "strength": 0.75, "annotator": "ann2"},
    ]
    r, c = load_comparisons(_write(tmp_path / "r.jsonl", rows))
    assert r == Ranking("p", ("a", "b", "c"), (2, 0, 1), "ann1", "g")
    assert c.strength == 0.75 and c.annotator == "ann2"


def test_messages_render_like_the_tokenizer_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name 2 fruits."},
        {"role": "assistant", "content": "apple, pear."},
        {"role": "user", "content": "Two more?"},
        {"role": "assistant", "content": "plum, kiwi."},
    ]
    ex = render_conversation(messages)
    assert ex.prompt == tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert ex.prompt + ex.completion == tokenizer.apply_chat_template(messages, tokenize=False)
    assert ex.completion == " plum, kiwi."
    assert ex.prompt == "Be brief.\n\nHuman: Name 2 fruits.\n\nAssistant: apple, pear.\n\nHuman: Two more?\n\nAssistant:"


def test_a_chatml_turn_ends_at_its_eos_and_not_at_the_newline_the_template_writes_after_it(tokenizer):
    """ChatML (SmolLM2, Qwen) closes a turn with "<|im_end|>\n", its EOS then a newline: the
    completion is the turn's text alone, so encoding appends the EOS where generation stops."""
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ex = render_conversation([{"role": "user", "content": "Name 2 fruits."}, {"role": "assistant", "content": "apple, pear."}], chat=chatml)
    assert ex.prompt == "<|im_start|>user\nName 2 fruits." + chatml.eos_token + "\n<|im_start|>assistant\n"
    assert ex.completion == "apple, pear."


def test_completion_tokens_are_exactly_the_completion_plus_eos(tokenizer):
    prompt, completion = "Human: Name 2 fruits.\n\nAssistant:", " apple, pear."
    enc = encode(tokenizer, prompt, completion, max_length=128)
    assert list(enc.input_ids[: enc.n_prompt]) == tokenizer(prompt)["input_ids"]
    assert list(enc.input_ids[enc.n_prompt :]) == tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # a boundary inside a word: tokenised together, "fr" + "uits" merge ("fr|uits" -> "fru|its"); encode
    # keeps the completion's own tokens, so the loss is on exactly what the model must produce
    prompt, completion = "Human: Name 2 fr", "uits."
    enc = encode(tokenizer, prompt, completion, max_length=128)
    assert list(enc.input_ids[enc.n_prompt : -1]) == tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert list(enc.input_ids[:-1]) != tokenizer(prompt + completion)["input_ids"]  # the joint tokenisation merges across it


def test_truncation_policy_cuts_prompt_left_then_completion_right(tokenizer):
    prompt, completion = "Human: " + "Name 2 fruits. " * 10 + "\n\nAssistant:", " apple, pear, plum, kiwi, lemon."
    p_ids = tokenizer(prompt)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    enc = encode(tokenizer, prompt, completion, max_length=len(c_ids) + 8, max_prompt_length=8)
    assert enc.truncated and enc.n_prompt == 8
    assert list(enc.input_ids) == p_ids[-8:] + c_ids  # prompt kept its end ("Assistant:")
    enc = encode(tokenizer, prompt, completion, max_length=12, max_prompt_length=8)
    assert list(enc.input_ids) == p_ids[-8:] + c_ids[:4]  # completion cut on the right: no EOS
    assert enc.input_ids[-1] != tokenizer.eos_token_id


def test_a_cut_prompt_keeps_the_bos_its_tokenizer_puts_first(bos_tokenizer):
    tok, bos = bos_tokenizer, bos_tokenizer.bos_token_id
    prompt, completion = "Human: " + "Name 2 fruits. " * 10 + "\n\nAssistant:", " apple."
    p_ids = tok(prompt)["input_ids"]
    assert p_ids[0] == bos and bos not in p_ids[1:]
    enc = encode(tok, prompt, completion, max_length=64, max_prompt_length=8)
    assert enc.truncated and enc.n_prompt == 8
    assert list(enc.input_ids[:8]) == [bos] + p_ids[-7:]  # BOS, then the prompt's last 7 tokens
    assert encode(tok, "Human: hi\n\nAssistant:", completion, max_length=64).input_ids[0] == bos


def test_eos_carries_loss_when_pad_equals_eos(tokenizer):
    eos = tokenizer.eos_token_id
    a = encode(tokenizer, "Human: hi\n\nAssistant:", " apple.", 64)
    b = encode(tokenizer, "Human: hi\n\nAssistant:", " apple, pear, plum.", 64)
    batch = collate([a, b], pad_id=eos)  # pad id == eos id, as with many users' tokenizers
    last = len(a.input_ids) - 1
    assert batch.input_ids[0, last] == eos and batch.completion_mask[0, last]
    assert not batch.completion_mask[0, last + 1 :].any()  # padding with the same id carries no loss
    assert batch.attention_mask.sum().item() == len(a.input_ids) + len(b.input_ids)


def test_a_file_of_completions_to_score_may_hold_an_empty_one(tmp_path):
    """A sample that emitted EOS at once has an empty completion: `preftune score` takes it, SFT does not."""
    path = _write(tmp_path / "c.jsonl", [{"prompt": "p", "completion": ""}, {"prompt": "p", "completion": " a"}])
    assert [e.completion for e in load_sft(path, empty_completions=True)] == ["", " a"]
    with pytest.raises(DataError, match="'completion' is empty"):
        load_sft(path)
