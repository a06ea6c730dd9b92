import json

import pytest
import torch

from preftune.checkpoint import latest_checkpoint
from preftune.config import TrainConfig
from preftune.data import encode
from preftune.loop import lr_factor, train
from preftune.methods.sft import SFT
from preftune.models import build_model


def _method(tokenizer, rows, batch_size=8):
    encs = [encode(tokenizer, r["prompt"], r["completion"], 64) for r in rows]
    return SFT(encs[8:], tokenizer.pad_token_id, batch_size, seed=3, held_out=encs[:8])


def _cfg(out, **kw):
    base = dict(out=str(out), max_steps=10, batch_size=8, lr=3e-3, save_every=3, log_every=1, eval_every=5, progress=False, seed=1)
    return TrainConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


def test_resumed_run_ends_with_the_same_parameters_as_an_uninterrupted_one(tmp_path, tokenizer, world_rows):
    full = build_model(tokenizer, size="micro", seed=0)
    train(full, _method(tokenizer, world_rows), _cfg(tmp_path / "full"))

    part = build_model(tokenizer, size="micro", seed=0)

    def stop(step):
        if step == 7:  # checkpoints at 3 and 6; step 7's work is lost, as after kill -9
            raise Interrupt

    with pytest.raises(Interrupt):
        train(part, _method(tokenizer, world_rows), _cfg(tmp_path / "part"), on_step=stop)
    assert latest_checkpoint(tmp_path / "part").name == "step-0000006"
    with pytest.raises(FileExistsError, match="--resume"):
        train(part, _method(tokenizer, world_rows), _cfg(tmp_path / "part"))

    resumed = build_model(tokenizer, size="micro", seed=123)  # different init: everything must come from the checkpoint
    train(resumed, _method(tokenizer, world_rows), _cfg(tmp_path / "part", resume=True))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # step 7's row from the interrupted run was dropped


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer, world_rows):
    """Loss is normalised over all tokens of the accumulated batch, not averaged per micro-batch:
    the gradient the optimiser sees is the same for 1 x 16 and 4 x 4."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    grads = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
    )
    try:
        rows = world_rows[:24]  # 8 held out, 16 train
        for batch_size, accum in ((16, 1), (4, 4)):
            model = build_model(tokenizer, size="micro", seed=0)
            cfg = _cfg(tmp_path / f"b{batch_size}", max_steps=1, eval_every=0, grad_accum=accum)
            train(model, _method(tokenizer, rows, batch_size=batch_size), cfg)
    finally:
        handle.remove()
    assert len(grads) == 2
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    # and the micro-batches really differ in token counts, so a per-micro-batch mean would not match
    sizes = {sum(len(e.input_ids) - e.n_prompt for e in mb) for mb in _method(tokenizer, rows, batch_size=4).batches(0)}
    assert len(sizes) > 1


def test_lr_schedule_warms_up_then_decays():
    assert [round(lr_factor(s, 10, 2, "linear"), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(9, 10, 2, "cosine") < 0.05
    assert lr_factor(5, 10, 0, "constant") == 1.0


def _trained(tmp_path, tokenizer, world_rows, name, arch="llama", **kw):
    model = build_model(tokenizer, size="micro", arch=arch, seed=0)
    train(model, _method(tokenizer, world_rows[:24]), _cfg(tmp_path / name, max_steps=4, eval_every=0, **kw))
    first = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    return model, first


def test_gradient_checkpointing_changes_memory_not_the_result(tmp_path, tokenizer, world_rows):
    """Recomputing activations in the backward gives the same gradients: the same weights after 4 steps."""
    for arch in ("llama", "gpt2"):
        plain, _ = _trained(tmp_path, tokenizer, world_rows, f"plain-{arch}", arch)
        ckpt, _ = _trained(tmp_path, tokenizer, world_rows, f"ckpt-{arch}", arch, gradient_checkpointing=True)
        assert ckpt.is_activation_checkpointing if hasattr(ckpt, "is_activation_checkpointing") else ckpt.is_gradient_checkpointing
        for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_weights(tmp_path, tokenizer, world_rows):
    fp32, first32 = _trained(tmp_path, tokenizer, world_rows, "fp32")
    bf16, first16 = _trained(tmp_path, tokenizer, world_rows, "bf16", precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    assert first16["loss/train"] == pytest.approx(first32["loss/train"], rel=2e-2)  # bf16 has ~3 significant digits
    assert first16["loss/train"] != first32["loss/train"]  # and bf16 really ran
    assert any(not torch.equal(a, b) for a, b in zip(fp32.parameters(), bf16.parameters()))
