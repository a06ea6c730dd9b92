"""The formats users already have: Hugging Face ``datasets`` saved with ``save_to_disk``, and TRL's
standard and conversational formats, read with no conversion step."""

import json

import pytest
from datasets import Dataset, DatasetDict

from preftune.atomic import write_jsonl
from preftune.cli import main
from preftune.data import Comparison, SFTExample, load_comparisons, load_prompts, load_sft
from preftune.world import lists


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def requests(n):
    """World requests as a user would type them (the text after "Human: ")."""
    return [r["prompt"].rsplit("Human: ", 1)[-1].removesuffix("\n\nAssistant:") for r in lists.prompts(n, seed=3)]


def test_trl_preference_formats_read_alike_and_follow_the_chat_template(tmp_path, bos_tokenizer):
    q = "Name 2 fruits."
    explicit = {"prompt": [user(q)], "chosen": [assistant("apple, pear.")], "rejected": [assistant("apple, apple.")]}
    implicit = {"chosen": [user(q), assistant("apple, pear.")], "rejected": [user(q), assistant("apple, apple.")]}
    standard = {"prompt": f"Human: {q}\n\nAssistant:", "chosen": " apple, pear.", "rejected": " apple, apple."}
    transcript = {"chosen": f"\n\nHuman: {q}\n\nAssistant: apple, pear.", "rejected": f"\n\nHuman: {q}\n\nAssistant: apple, apple."}
    want = Comparison(f"Human: {q}\n\nAssistant:", " apple, pear.", " apple, apple.")
    for i, row in enumerate([explicit, implicit, standard]):
        Dataset.from_list([row]).save_to_disk(str(tmp_path / f"ds{i}"))
        assert load_comparisons(tmp_path / f"ds{i}") == [want], row
    assert load_comparisons(_jsonl(tmp_path / "t.jsonl", [transcript]))[0].chosen == " apple, pear."
    # TRL's standard implicit prompt: the shared beginning, a space it ends on going to the completions
    trl = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert load_comparisons(_jsonl(tmp_path / "i.jsonl", [trl])) == [Comparison("The sky is", " blue.", " green.")]
    # a tokenizer's own template renders the messages: <|user|>...<|assistant|> here
    (got,) = load_comparisons(tmp_path / "ds0", chat=bos_tokenizer)
    assert got == Comparison(f"<|user|>{q}<|assistant|>", "apple, pear.", "apple, apple.")
    assert got.prompt == bos_tokenizer.apply_chat_template([user(q)], tokenize=False, add_generation_prompt=True)


def test_trl_sft_and_prompt_formats_and_a_dataset_dict(tmp_path):
    q = "Name 2 fruits."
    rows = [
        {"prompt": f"Human: {q}\n\nAssistant:", "completion": " apple, pear."},
        {"prompt": [user(q)], "completion": [assistant("apple, pear.")]},
        {"messages": [user(q), assistant("apple, pear.")]},
    ]
    want = SFTExample(f"Human: {q}\n\nAssistant:", " apple, pear.")
    for i, row in enumerate(rows):
        DatasetDict({"train": Dataset.from_list([row]), "test": Dataset.from_list([row])}).save_to_disk(str(tmp_path / f"dd{i}"))
        assert load_sft(tmp_path / f"dd{i}") == [want] == load_sft(tmp_path / f"dd{i}" / "test"), row
    Dataset.from_list([{"prompt": [user(q)]}]).save_to_disk(str(tmp_path / "prompts"))
    assert load_prompts(tmp_path / "prompts") == [want.prompt]
    DatasetDict({"validation": Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "novalid"))
    with pytest.raises(
        ValueError, match=r"novalid:directory: a DatasetDict without a 'train' split: name one, e\.g\. .*novalid/validation"
    ):
        load_sft(tmp_path / "novalid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty:directory: not a dataset saved with save_to_disk"):
        load_sft(tmp_path / "empty")


def _jsonl(path, rows):
    write_jsonl(path, rows)
    return path


@pytest.mark.slow
def test_a_conversational_preference_dataset_trains_dpo_and_reward_with_no_conversion(tmp_path, saved_policy, capsys):
    """TRL's conversational preference format with an implicit prompt, saved with ``datasets``."""
    asks = requests(24)
    rows = [
        {"chosen": [user(a), assistant("apple, pear.")], "rejected": [user(a), assistant("apple, apple, apple.")]}  # a repeat is worse
        for a in asks
    ]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "prefs"))
    common = ["--train.max-steps", "2", "--train.batch-size", "4", "--train.no-progress"]
    assert main(["dpo", "--model", saved_policy, "--data", str(tmp_path / "prefs"), "--train.out", str(tmp_path / "dpo"), *common]) == 0
    assert "dpo: 23 training and 1 held-out pairs" in capsys.readouterr().out  # 24 rows, 5% held out
    assert (tmp_path / "dpo" / "config.json").exists() and (tmp_path / "dpo" / "model.safetensors").exists()
    argv = [
        "reward",
        "--model",
        saved_policy,
        "--data",
        str(tmp_path / "prefs"),
        "--train.out",
        str(tmp_path / "rm"),
        "--no-world-eval",
        *common,
    ]
    assert main(argv) == 0
    assert "reward: 22 training and 2 held-out comparisons" in capsys.readouterr().out  # 10% held out
    assert set(json.loads((tmp_path / "rm" / "eval.json").read_text())) == {"held_out_accuracy"}
    assert (tmp_path / "rm" / "config.json").exists()
