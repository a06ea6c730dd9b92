"""One RL iteration trained on a fixed rollout file, so tests can compare processes on the same data.

    python tests/rl_update.py MODEL ALGO ROLLOUT OUT BATCH_SIZE [lora]          (or under torchrun)

Runs what ``preftune rl`` runs (the same RLHF method and loop) as a run resumed just after the
rollout was collected, and writes every trained parameter to ``OUT/trained.safetensors``.
"""

import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from preftune import distributed
from preftune.commands.rl import policy_and_reference
from preftune.config import RLConfig, TrainConfig
from preftune.loop import train
from preftune.methods.algorithms import build_algorithm
from preftune.methods.rl import RLHF, Scorer


def main(model: str, algo: str, rollout: str, out: str, batch_size: str, lora: str = "") -> None:
    torch.set_num_threads(1)
    distributed.use_device(os.environ.get("PREFTUNE_TEST_DEVICE", "cpu"))
    distributed.setup()
    train_cfg = TrainConfig(out=out, batch_size=int(batch_size), lr=1e-3, warmup=0.0, schedule="constant", progress=False, dropout=False)
    cfg = RLConfig(
        model=model, reward="gold", prompts="-", algo=algo, k=4, prompts_per_iter=4, iterations=1, train=train_cfg, lora=lora == "lora"
    )
    if distributed.is_main():
        (Path(out) / "rollouts").mkdir(parents=True, exist_ok=True)
        shutil.copy(rollout, Path(out) / "rollouts" / "iter-00000.pt")
    distributed.barrier()
    policy, tokenizer, reference = policy_and_reference(cfg)
    algorithm = build_algorithm(cfg)
    method = RLHF(cfg, algorithm, policy, tokenizer, reference, Scorer("gold"), ["-"], start=1)
    trained = algorithm.trained(policy)
    train(trained, method, cfg.train)
    if distributed.is_main():
        save_file({n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}, str(Path(out) / "trained.safetensors"))
    distributed.leave()


if __name__ == "__main__":
    main(*sys.argv[1:])
