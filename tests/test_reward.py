import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from preftune.atomic import write_jsonl
from preftune.commands.reward import reward as reward_command
from preftune.config import RewardConfig, TrainConfig
from preftune.data import Comparison, Ranking, collate, encode
from preftune.evaluate import spearman
from preftune.loop import train
from preftune.methods.reward import RewardTraining, score_texts, to_units
from preftune.models import RewardModel, build_reward_model, load_reward_model, save_model
from preftune.world import lists


@pytest.fixture()
def policy_dir(tmp_path, model, tokenizer):
    save_model(model, tokenizer, tmp_path / "policy")
    return tmp_path / "policy"


def test_score_is_identical_under_padding_side_and_batch_composition(policy_dir, tokenizer, world_rows):
    rm, _ = build_reward_model(policy_dir)
    rm.eval()
    encs = [encode(tokenizer, r["prompt"], r["completion"], 64) for r in world_rows[:6]]
    with torch.no_grad():
        right = rm(*_ids(collate(encs, tokenizer.pad_token_id, "right")))
        left = rm(*_ids(collate(encs, tokenizer.pad_token_id, "left")))
        alone = torch.cat([rm(*_ids(collate([e], tokenizer.pad_token_id))) for e in encs])
        shuffled = rm(*_ids(collate(encs[::-1], tokenizer.pad_token_id)))
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, shuffled.flip(0), atol=1e-5, rtol=1e-5)
    assert right.std() > 0  # a constant score would pass the checks above trivially


def _ids(batch):
    return batch.input_ids, batch.attention_mask


def test_saved_reward_model_loads_with_plain_transformers(tmp_path, policy_dir, tokenizer):
    rm, _ = build_reward_model(policy_dir)
    rm.config.preftune_reward_offset = 0.25
    save_model(rm.model, tokenizer, tmp_path / "rm")
    ours, tok = load_reward_model(tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    pairs = [("Human: Name 2 fruits.\n\nAssistant:", " apple, pear."), ("Human: List one tool.\n\nAssistant:", " saw, saw, saw.")]
    scores = score_texts(ours, tok, pairs)
    batch = collate([encode(tok, p, c, 64) for p, c in pairs], tok.pad_token_id)
    with torch.no_grad():
        logits = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits[:, 0]
    torch.testing.assert_close(scores, logits - 0.25, atol=1e-5, rtol=1e-5)


def _world_sets(n, k, seed):
    """n prompts, k answers each (correct items, different counts), with their gold utilities."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, req = lists.make_prompt(rng, split="train")
        members = list(lists.CATEGORIES[req.category][2])
        comps = [lists.format_answer(rng.sample(members, m)) for m in rng.sample(range(1, 8), k)]
        out.append((prompt, comps, [lists.gold_reward(prompt, c) for c in comps]))
    return out


@pytest.mark.slow
def test_rankings_and_pairs_from_the_same_utilities_train_to_the_same_ordering(tmp_path, policy_dir, tokenizer):
    """40 prompts with 3 answers each, ordered by the gold utility: as rankings of 3, or as their
    3 pairs. Both fits order every training set the same way, which is the gold way."""
    sets = _world_sets(40, 3, seed=0)
    rankings, pairs = [], []
    for p, c, u in sets:
        order = sorted(range(3), key=lambda i: -u[i])
        rankings.append(Ranking(p, tuple(c), tuple(order)))
        pairs += [Comparison(p, c[w], c[l]) for w, l in [(order[0], order[1]), (order[0], order[2]), (order[1], order[2])]]
    orders = []
    for name, records, bs in (("rank", rankings, 4), ("pair", pairs, 12)):  # the same 12 pairs per step
        rm, _ = build_reward_model(policy_dir, seed=0)
        units = to_units(records, tokenizer, 64, 48, use_strength=False)
        cfg = TrainConfig(out=str(tmp_path / name), epochs=25, batch_size=bs, lr=2e-3, progress=False, save_every=0)
        train(rm, RewardTraining(units, [], tokenizer.pad_token_id, bs, seed=0), cfg)
        orders.append([tuple(score_texts(rm, tokenizer, [(p, x) for x in c]).argsort(descending=True).tolist()) for p, c, _ in sets])
    gold = [tuple(sorted(range(3), key=lambda i: -u[i])) for _, _, u in sets]
    agree = [sum(a == b for a, b in zip(o, gold)) / len(sets) for o in orders]
    assert min(agree) >= 0.9, agree
    assert sum(a == b for a, b in zip(*orders)) / len(sets) >= 0.9


def test_spearman_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # tie gets rank 0.5


def test_reward_model_is_the_policy_transformer_with_a_scalar_head(policy_dir, model):
    rm, _ = build_reward_model(policy_dir)
    assert isinstance(rm, RewardModel) and rm.model.score.out_features == 1
    policy_layer = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(dict(rm.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"], policy_layer)


@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_pooled_score_is_the_head_over_the_completion_tokens_one_sequence_at_a_time(policy_dir, tokenizer, world_rows, pool):
    """A naive loop: each sequence alone, unpadded, through the plain transformers model; the head at every
    completion token, averaged or summed. The pooled score must match it, whatever the padding side."""
    rm, _ = build_reward_model(policy_dir, pool=pool)
    rm.eval()
    encs = [encode(tokenizer, r["prompt"], r["completion"], 64) for r in world_rows[:5]]
    with torch.no_grad():
        naive = []
        for e in encs:
            ids = torch.tensor([e.input_ids])
            hidden = rm.model.base_model(input_ids=ids).last_hidden_state[0]  # (T, H)
            head = rm.model.score(hidden[e.n_prompt :]).squeeze(-1)  # completion tokens, EOS included
            naive.append(head.sum() if pool == "sum" else head.mean())
        naive = torch.stack(naive)
        for side in ("right", "left"):
            batch = collate(encs, tokenizer.pad_token_id, side)
            torch.testing.assert_close(rm(batch.input_ids, batch.attention_mask, batch.completion_mask), naive, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="completion_mask"):
        rm(batch.input_ids, batch.attention_mask)
    rm.config.preftune_reward_pool = "last"  # what the pool is comes from the saved config
    assert rm.pool == "last"


def test_ensemble_scores_mean_minus_k_std(policy_dir, tokenizer, world_rows):
    from preftune.models import RewardEnsemble

    members = [build_reward_model(policy_dir, seed=s)[0].eval() for s in (0, 1, 2)]
    batch = collate([encode(tokenizer, r["prompt"], r["completion"], 64) for r in world_rows[:4]], tokenizer.pad_token_id)
    with torch.no_grad():
        each = [m(batch.input_ids, batch.attention_mask) for m in members]
        got = RewardEnsemble(members, k=0.5)(batch.input_ids, batch.attention_mask)
    for i in range(4):  # by hand: sample standard deviation of three numbers
        xs = [float(s[i]) for s in each]
        mean = sum(xs) / 3
        sd = (sum((x - mean) ** 2 for x in xs) / 2) ** 0.5
        assert float(got[i]) == pytest.approx(mean - 0.5 * sd, abs=1e-5)
    assert len({round(x, 4) for x in (float(s[0]) for s in each)}) == 3  # the members differ (their heads' seeds)


@pytest.mark.slow
def test_reward_lora_trains_adapters_and_the_head_and_saves_a_plain_reward_model(tmp_path, policy_dir, tokenizer):
    """``reward --lora``: adapters on the transformer, the scalar head trained whole. What is saved is a
    plain reward model (adapters merged; plain transformers loads it) that orders the training pairs
    by gold, with the adapter beside it; the transformer moved only by a low-rank update."""
    rows = []
    for p, c, u in _world_sets(40, 2, seed=1):
        w, l = (0, 1) if u[0] > u[1] else (1, 0)
        rows.append({"prompt": p, "chosen": c[w], "rejected": c[l]})
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "rm"
    train_cfg = TrainConfig(out=str(out), epochs=15, batch_size=8, lr=3e-3, progress=False, save_every=0, eval_every=0)
    cfg = RewardConfig(model=str(policy_dir), data=str(tmp_path / "pairs.jsonl"), eval_data=str(tmp_path / "pairs.jsonl"), world_eval=False)
    reward_command(replace(cfg, lora=True, lora_r=4, train=train_cfg))
    assert (out / "adapter/adapter_config.json").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    start = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    moved = {n: p.detach() - dict(start.named_parameters())[n].detach() for n, p in plain.named_parameters() if n != "score.weight"}
    q = moved["model.layers.0.self_attn.q_proj.weight"]
    assert q.abs().max() > 0 and torch.linalg.matrix_rank(q) <= 4  # a rank-4 update, merged
    assert all(torch.equal(d, torch.zeros_like(d)) for n, d in moved.items() if "norm" in n or "embed" in n)
    rm, tok = load_reward_model(out)
    scores = score_texts(rm, tok, [(r["prompt"], x) for r in rows for x in (r["chosen"], r["rejected"])]).view(-1, 2)
    assert (scores[:, 0] > scores[:, 1]).float().mean() >= 0.9
