import pytest
import torch

from preftune import logprobs, losses
from preftune.data import collate, encode
from preftune.logprobs import completion_logps


def _encoded(tokenizer, rows):
    return [encode(tokenizer, r["prompt"], r["completion"], 64) for r in rows]


def _naive_logps(model, enc, temperature=1.0):
    """One example at a time, no padding: sum of log p(token) over completion tokens."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0] / temperature  # (T, V)
    logp = logits.log_softmax(-1)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(enc.n_prompt, len(enc.input_ids)))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logps_equal_naive_loop_under_padding(model, tokenizer, world_rows, side, temperature):
    encs = _encoded(tokenizer, world_rows[:6])
    assert len({len(e.input_ids) for e in encs}) > 1  # the batch really is padded
    batch = collate(encs, tokenizer.pad_token_id, padding_side=side)
    with torch.no_grad():
        lp = completion_logps(model, batch, temperature)
    naive = torch.tensor([_naive_logps(model, e, temperature) for e in encs])
    torch.testing.assert_close(lp.logps, naive, atol=1e-4, rtol=1e-5)
    assert lp.n_tokens.tolist() == [len(e.input_ids) - e.n_prompt for e in encs]


def test_left_and_right_padding_agree_token_by_token(model, tokenizer, world_rows):
    encs = _encoded(tokenizer, world_rows[:5])
    with torch.no_grad():
        right = completion_logps(model, collate(encs, tokenizer.pad_token_id, "right"))
        left = completion_logps(model, collate(encs, tokenizer.pad_token_id, "left"))
    for i, e in enumerate(encs):
        n = len(e.input_ids) - e.n_prompt
        torch.testing.assert_close(right.token_logps[i][right.mask[i]], left.token_logps[i][left.mask[i]], atol=1e-5, rtol=1e-5)
        assert right.mask[i].sum() == left.mask[i].sum() == n


@pytest.mark.parametrize("packed", [True, False])
def test_the_output_layer_runs_only_where_a_completion_token_is_predicted(model, tokenizer, world_rows, packed, monkeypatch):
    """Prompt and padding positions get no logits: the output layer's input holds one row per
    completion token (their prompts differ, so no position is shared), packed or padded."""
    if not packed:
        monkeypatch.setattr(logprobs, "PACKABLE", frozenset())
    encs = _encoded(tokenizer, world_rows[:5])
    batch = collate(encs, tokenizer.pad_token_id, "left")
    assert (logprobs.packing_for(model, batch.input_ids, batch.attention_mask) is not None) == packed
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            completion_logps(model, batch)
    finally:
        handle.remove()
    assert rows == [sum(len(e.input_ids) - e.n_prompt for e in encs)]


def test_nll_is_the_token_mean_over_completion_tokens():
    """Hand values: token log-probs [[-1, -2, -3], [-4, -5, -6]], completion mask
    [[F, T, T], [F, F, T]] -> sum = 2 + 3 + 6 = 11 over 3 tokens."""
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    total, count = losses.nll(lp, mask)
    assert total.item() == 11.0 and count.item() == 3
