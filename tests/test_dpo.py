import json
import math

import pytest
import torch

from preftune.commands.dpo import cached_reference, to_pairs
from preftune.config import PREFERENCE_LOSSES, DPOConfig, TrainConfig
from preftune.data import Comparison, encode
from preftune.loop import train
from preftune.methods.dpo import LOSSES, DirectPreference, Pair, PairData, Unlikelihood, preference_loss, reference_logps
from preftune.world import lists


def _pairs(tokenizer, n=12, seed=0):
    rows = lists.sft_data(2 * n, seed=seed)
    recs = [Comparison(a["prompt"], a["completion"], b["completion"], strength=0.75) for a, b in zip(rows[::2], rows[1::2])]
    return to_pairs(recs, tokenizer, DPOConfig().tokens)


def _method(pairs, held, tokenizer, name, beta=0.1, batch_size=4):
    loss = preference_loss(DPOConfig(model="m", data="d", loss=name, beta=beta))
    return DirectPreference(PairData(pairs, held, tokenizer.pad_token_id, batch_size, 0), loss, beta)


def test_reference_cache_is_keyed_on_the_weights_not_the_path(tmp_path, model, tokenizer, monkeypatch):
    """Same weights and pairs: served from the cache (nothing recomputed), whatever the model's path;
    changed weights at the same path: recomputed, and different."""
    from preftune.commands import dpo as dpo_command

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    pairs = _pairs(tokenizer)
    first = cached_reference(model, pairs, tokenizer.pad_token_id, DPOConfig(model="a"), False)
    assert len(list((tmp_path / "cache/reference").glob("*.pt"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    with monkeypatch.context() as m:
        m.setattr(dpo_command, "reference_logps", no_recompute)
        assert cached_reference(model, pairs, tokenizer.pad_token_id, DPOConfig(model="elsewhere"), False) == first
    with torch.no_grad():  # retrained in place: the cache must not answer for it
        for p in model.parameters():
            p.add_(0.1)
    changed = cached_reference(model, pairs, tokenizer.pad_token_id, DPOConfig(model="a"), False)
    assert [p.ref_chosen for p in changed] != pytest.approx([p.ref_chosen for p in first])
    assert len(list((tmp_path / "cache/reference").glob("*.pt"))) == 2
    with torch.no_grad():  # and the cached values are the recomputed ones
        for p in model.parameters():
            p.sub_(0.1)
    again = reference_logps(model, pairs, tokenizer.pad_token_id, False, batch_size=5)
    assert [p.ref_chosen for p in again] == pytest.approx([p.ref_chosen for p in first], abs=1e-4)
    assert [p.ref_rejected for p in again] == pytest.approx([p.ref_rejected for p in first], abs=1e-4)
    now = cached_reference(model, pairs, tokenizer.pad_token_id, DPOConfig(model="a"), False)  # these weights, cached
    for entry in (tmp_path / "cache/reference").glob("*.pt"):  # damaged from outside: recomputed, not a crash
        entry.write_bytes(entry.read_bytes()[:20])
    redone = cached_reference(model, pairs, tokenizer.pad_token_id, DPOConfig(model="a"), False)
    assert [p.ref_chosen for p in redone] == pytest.approx([p.ref_chosen for p in now], abs=1e-5)


@pytest.mark.parametrize("name", ["dpo", "ipo", "soft", "simpo"])
def test_loss_is_identical_batched_together_or_apart(model, tokenizer, name):
    pairs = reference_logps(model, _pairs(tokenizer), tokenizer.pad_token_id, False)
    with torch.no_grad():
        for p in model.parameters():  # move the policy off the reference so Δ != 0
            p.add_(0.01 * torch.randn_like(p))
    method = _method(pairs, [], tokenizer, name)
    with torch.no_grad():
        together = method.loss(model, pairs).loss
        apart = sum(method.loss(model, [p]).loss for p in pairs)
    assert together.item() == pytest.approx(apart.item(), rel=1e-4)
    assert together.item() != pytest.approx(len(pairs) * 0.6931, rel=1e-3)  # not the Δ = 0 value


def test_dpo_at_the_reference_has_loss_log_2(model, tokenizer):
    pairs = reference_logps(model, _pairs(tokenizer), tokenizer.pad_token_id, False)
    method = _method(pairs, [], tokenizer, "dpo")
    with torch.no_grad():
        out = method.loss(model, pairs)
    assert out.loss.item() / len(pairs) == pytest.approx(0.693147, abs=1e-4)
    assert out.metrics["rewards/margin"] == pytest.approx(0.0, abs=1e-5)


def test_dpo_and_unlikelihood_training_separate_chosen_from_rejected(tmp_path, tokenizer):
    from preftune.models import build_model

    for name in ("dpo", "unlikelihood"):
        model = build_model(tokenizer, size="micro", seed=0)
        pairs = reference_logps(model, _pairs(tokenizer, n=16), tokenizer.pad_token_id, False)
        if name == "dpo":
            method = _method(pairs, pairs, tokenizer, "dpo", batch_size=8)
        else:
            method = Unlikelihood(PairData(pairs, pairs, tokenizer.pad_token_id, 8, 0))

        def gap(m, method=method, pairs=pairs):
            with torch.no_grad():
                metrics = method.loss(m, pairs).metrics
            return metrics["logps/chosen"] - metrics["logps/rejected"]

        before = gap(model)
        train(model, method, TrainConfig(out=str(tmp_path / name), max_steps=20, lr=3e-3, batch_size=8, progress=False, save_every=0))
        assert gap(model) > before + 1.0, name
        if name == "dpo":
            assert method.evaluate(model)["accuracy"] > 0.8


def test_rankings_expand_into_every_pair(tokenizer):
    from preftune.data import Ranking

    pairs = to_pairs([Ranking("Human: Name 2 fruits.\n\nAssistant:", (" a.", " b.", " c."), (2, 0, 1))], tokenizer, DPOConfig().tokens)
    enc = {t: encode(tokenizer, "Human: Name 2 fruits.\n\nAssistant:", t, 96, 64) for t in (" a.", " b.", " c.")}
    assert [(p.chosen, p.rejected) for p in pairs] == [(enc[" c."], enc[" a."]), (enc[" c."], enc[" b."]), (enc[" a."], enc[" b."])]
    assert all(isinstance(p, Pair) for p in pairs)


def test_simpo_needs_no_reference_and_uses_mean_logps(model, tokenizer):
    """SimPO's Δ̄ is mean log π(y_w) - mean log π(y_l) of the policy alone: its loss equals
    -log σ(β·Δ̄ - γ) computed from the per-token log-probs directly, whatever ref_* the pairs carry."""
    pairs = [Pair(p.chosen, p.rejected, p.strength, ref_chosen=-100.0, ref_rejected=50.0) for p in _pairs(tokenizer, n=4)]
    loss = preference_loss(DPOConfig(model="m", data="d", loss="simpo", beta=2.0, simpo_gamma=0.5))
    assert not loss.reference and loss.length_normalise
    method = DirectPreference(PairData(pairs, [], tokenizer.pad_token_id, 4, 0), loss, 2.0)
    with torch.no_grad():
        got = method.loss(model, pairs).loss.item()
        want = 0.0
        for p in pairs:
            means = []
            for enc in (p.chosen, p.rejected):
                ids = torch.tensor([enc.input_ids])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                tok = logp.gather(-1, ids[0, 1:, None])[:, 0][enc.n_prompt - 1 :]
                means.append(tok.mean().item())
            want += math.log1p(math.exp(-(2.0 * (means[0] - means[1]) - 0.5)))
    assert got == pytest.approx(want, rel=1e-4)


def test_every_loss_name_is_registered_once():
    assert (*LOSSES, "unlikelihood") == PREFERENCE_LOSSES


@pytest.mark.parametrize("dropout", [False, True])
def test_dropout_is_off_by_default_so_the_first_step_starts_at_the_reference(tmp_path, tokenizer, gpt2_with_dropout, dropout):
    """GPT-2 with dropout 0.1: the reference log-probs are taken without dropout, so a policy that
    trains with it starts with Δ ≠ 0; the DPO trainer's default (dropout off) starts at Δ = 0."""
    from preftune.models import load_policy

    model, _ = load_policy(gpt2_with_dropout)
    pairs = reference_logps(model, _pairs(tokenizer, n=8), tokenizer.pad_token_id, False)
    assert DPOConfig().train.dropout is False
    cfg = TrainConfig(out=str(tmp_path / f"d{dropout}"), max_steps=1, batch_size=8, lr=0.0, progress=False, save_every=0, dropout=dropout)
    train(model, _method(pairs, [], tokenizer, "dpo", batch_size=8), cfg)
    margin = json.loads((tmp_path / f"d{dropout}" / "metrics.jsonl").read_text().splitlines()[0])["rewards/margin"]
    assert (abs(margin) > 1e-5) if dropout else (abs(margin) < 1e-6), margin
