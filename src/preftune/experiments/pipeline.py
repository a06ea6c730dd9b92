"""The experiments' shared pipeline: world → pretrain → SFT → pi_SFT samples → simulated labels →
reward model, and policies trained and evaluated on top of it.

Every stage is the command of the same name, run with the config the experiment file's
``pipeline:`` section gives it (plus the wiring between stages: paths and the seed). A stage whose
output exists with the same config and inputs is reused; one interrupted with the same config and
inputs resumes from its checkpoint; anything else is rebuilt.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..alarms import raised
from ..atomic import write_atomic, write_jsonl
from ..commands.dpo import dpo
from ..commands.reward import reward
from ..commands.rl import rl
from ..commands.sample import annotate, sample_sets
from ..commands.sft import pretrain, sft
from ..config import (
    AnnotateConfig,
    DPOConfig,
    LabelsConfig,
    PretrainConfig,
    RewardConfig,
    RLConfig,
    SampleConfig,
    SFTConfig,
    WorldConfig,
    override,
)
from ..data import load_prompts
from ..evaluate import demonstrator_samples, evaluate_samples, kl_to_reference, win_rate
from ..losses import best_of_n_kl, pick_best
from ..methods.rl import Scorer
from ..models import load_policy, load_tokenizer
from ..rollout import Sample, sample
from ..stages import STAGE_CONFIGS, digest, reset_stage, run_stage, timed, worker_start
from ..world import lists, write_world


def check_settings(settings: dict, where: str) -> None:
    """Refuse, before anything runs, a stage or a field the pipeline does not have."""
    for stage, values in settings.items():
        if stage not in STAGE_CONFIGS:
            raise ValueError(f"{where}: pipeline has no stage {stage!r} (stages: {', '.join(STAGE_CONFIGS)})")
        override(STAGE_CONFIGS[stage](), values, f"{where}: pipeline.{stage}")


class Pipeline:
    """The shared stages, built on first use, plus evaluation of policies on held-out prompts.

    ``settings`` is the experiment file's ``pipeline:`` section: per stage (world, pretrain, sft,
    sample, reward, rl, dpo), overrides of that command's config.

    With ``workers`` > 1, policies (:meth:`rl_policy`, :meth:`dpo_policy`) train in that many
    worker processes at once, one thread each, their output in ``OUT/NAME/train.log``; from the
    first one queued, this process also runs with one thread. :meth:`wait` (and :meth:`evaluate`)
    waits for one. Every stage then runs single-threaded whatever the number of workers, so results
    do not depend on it; ``workers`` = 1 runs everything here, one after another, on every thread.
    """

    def __init__(self, out: str | Path, seed: int, settings: dict[str, dict], workers: int = 1, start: str = ""):
        self.out, self.seed, self.settings = Path(out), seed, settings
        self.start = start  # a pretrained model directory to start from: no pretraining, and the "base" is it
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._queued: dict[str, Future | None] = {}  # policies asked for: a worker's future, None once done
        self.timings: dict[str, float] = {}
        self._files: dict[str, Path] | None = None
        self._ref = None
        self._heldout: list[str] | None = None
        self._sft_ready = False
        self._samples: str | None = None
        self._labelled: set[str] = set()
        self.gen = replace(self.config("sample", SampleConfig(model="", prompts="")).gen, seed=seed)

    def path(self, name: str) -> str:
        return self.start if name == "base" and self.start else str(self.out / name)

    def config(self, stage: str, cfg: Any, changes: dict | None = None) -> Any:
        """``cfg`` with the file's settings for ``stage``, then ``changes``, laid over it."""
        return override(override(cfg, self.settings.get(stage, {}), f"pipeline.{stage}"), changes or {}, f"{stage} run")

    def _train(self, cfg: Any, name: str) -> Any:
        return replace(cfg, train=replace(cfg.train, out=self.path(name), seed=self.seed))

    # -- data and models --------------------------------------------------------------------

    @property
    def files(self) -> dict[str, Path]:
        if self._files is None:
            self._files = write_world(self.config("world", WorldConfig(out=self.path("data"), seed=self.seed)))
        return self._files

    def sft(self) -> str:
        if self._sft_ready:
            return self.path("sft")
        base = self._train(self.config("pretrain", PretrainConfig(data=str(self.files["corpus"]))), "base")
        cfg = self._train(self.config("sft", SFTConfig(model=self.path("base"), data=str(self.files["sft"]))), "sft")
        if self.start:
            if not (Path(self.start) / "config.json").exists():
                raise FileNotFoundError(f"{self.start}: no model here to start from (a model directory; `preftune import` makes one)")
        else:
            run_stage("pretrain", pretrain, base, [str(self.files["corpus"])], self.timings)
        run_stage("sft", sft, cfg, [str(self.files["sft"]), self.path("base")], self.timings)
        self._sft_ready = True
        return self.path("sft")

    def samples(self) -> str:
        """K samples of pi_SFT per training prompt: the material every comparison is made of."""
        if self._samples:
            return self._samples
        out = self.out / "data/samples.jsonl"
        stamp = out.with_suffix(".sha256")
        now = digest([str(self.files["prompts"]), self.sft()])
        if not (out.exists() and stamp.exists() and stamp.read_text() == now):
            s = time.perf_counter()
            sample_sets(
                self.config("sample", SampleConfig(model=self.sft(), prompts=str(self.files["prompts"]), out=str(out), gen=self.gen))
            )
            write_atomic(stamp, now)
            self.timings["sample"] = round(time.perf_counter() - s, 1)
        self._samples = str(out)
        return self._samples

    def labels(self, name: str, fmt: str = "pairs", minority: float = 0.0, limit: int = 0, tau: float = 0.0) -> str:
        """Simulated labels of the samples (cheap and deterministic: written once per run); ``limit``:
        only the first N rows, else the ``labels`` setting's count for the format (0: all); ``tau``:
        the annotators' temperature, else the ``labels`` setting's."""
        out = self.out / f"data/{name}.jsonl"
        if name in self._labelled:
            return str(out)
        self._labelled.add(name)
        cfg = self.config("labels", LabelsConfig())
        limit = limit or (cfg.rankings if fmt == "rankings" else cfg.pairs)
        tau = tau or cfg.tau
        annotate(
            AnnotateConfig(samples=self.samples(), out=str(out), simulated=True, format=fmt, minority=minority, seed=self.seed, tau=tau)
        )
        if limit:
            rows = [json.loads(line) for line in out.read_text().splitlines()][:limit]
            write_jsonl(out, rows)
        return str(out)

    def reward_config(self, name: str, limit: int = 0, changes: dict | None = None, tau: float = 0.0) -> RewardConfig:
        """``preftune reward``'s config for a reward model on K-way rankings of pi_SFT samples (``limit``:
        only the first N; ``tau``: labelled at that temperature): the file's ``reward`` settings, then ``changes``."""
        tau = tau or self.config("labels", LabelsConfig()).tau
        name_of = f"rankings{limit or ''}" + (f"-tau{tau:g}" if tau != LabelsConfig().tau else "")
        data = self.labels(name_of, "rankings", limit=limit, tau=tau)
        base = RewardConfig(model=self.sft(), data=data, eval_prompts=str(self.files["heldout"]), tau=tau)
        return override(self._train(self.config("reward", base), name), changes or {}, f"{name} run")  # changes last: a seed too

    def reward_model(self, name: str = "rm", limit: int = 0, changes: dict | None = None, tau: float = 0.0) -> tuple[str, dict]:
        """Train (or reuse) a reward model (:meth:`reward_config`); returns its directory and evaluation."""
        cfg = self.reward_config(name, limit, changes, tau)
        run_stage(name, reward, cfg, [cfg.data, self.sft()], self.timings)
        return self.path(name), json.loads((self.out / name / "eval.json").read_text())

    def rl_config(self, name: str, reward_dir: str, changes: dict | None = None) -> RLConfig:
        """``preftune rl``'s config for a policy from pi_SFT: the file's ``rl`` settings, then ``changes``."""
        base = RLConfig(model=self.path("sft"), reward=reward_dir, prompts=str(self.files["prompts"]))
        return self._train(self.config("rl", base, changes), name)

    def dpo_config(self, name: str, data: str, changes: dict | None = None) -> DPOConfig:
        """``preftune dpo``'s config for a policy from pi_SFT: the file's ``dpo`` settings, then ``changes``."""
        return self._train(self.config("dpo", DPOConfig(model=self.path("sft"), data=data), changes), name)

    def rl_policy(self, name: str, reward_dir: str, changes: dict | None = None) -> RLConfig:
        """Train (or reuse, or queue on a worker) an RL policy at ``OUT/name``; returns its config."""
        cfg = self.rl_config(name, reward_dir, changes)
        self.sft()
        self._policy(name, rl, cfg, [str(self.files["prompts"]), cfg.model, *([reward_dir] if reward_dir != "gold" else [])])
        return cfg

    def dpo_policy(self, name: str, data: str, changes: dict | None = None) -> DPOConfig:
        """Train (or reuse, or queue on a worker) a DPO-family policy at ``OUT/name``; returns its config."""
        cfg = self.dpo_config(name, data, changes)
        self._policy(name, dpo, cfg, [data, self.sft()])
        return cfg

    def _policy(self, name: str, stage, cfg, inputs: list[str]) -> None:
        if name in self._queued:  # asked for twice (the frontier's default-β point is the methods table's run)
            return
        if self.workers <= 1:
            run_stage(name, stage, cfg, inputs, self.timings)
            self._queued[name] = None
            return
        ready = reset_stage(name, cfg, inputs)
        if ready is None:
            self._queued[name] = None
            return
        log = Path(cfg.train.out) / "train.log"
        future = self.pool().submit(timed, stage, ready, str(log))
        future.add_done_callback(
            lambda f: print(f"  {name}: " + (f"trained in {f.result()} s" if not f.exception() else f"failed (see {log})"))
        )
        self._queued[name] = future
        print(f"{name}: queued (log {log})")

    def pool(self) -> ProcessPoolExecutor:
        """The worker processes (``workers`` > 1), started on first use; from then on this process
        also runs with one thread."""
        if self._pool is None:
            torch.set_num_threads(1)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=worker_start)
        return self._pool

    def wait(self, name: str) -> None:
        """Wait for a policy queued on a worker (nothing to wait for otherwise)."""
        future = self._queued.get(name)
        if future is None:
            return
        self._queued[name] = None
        self.timings[name] = future.result()
        write_atomic(self.out / name / "wall_seconds", str(self.timings[name]))

    def trained(self) -> list[str]:
        """Every policy trained (or queued) so far, in the order asked for."""
        return list(self._queued)

    def close(self) -> None:
        """Stop the workers (cancelling queued runs if this is an early exit)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # -- evaluation -------------------------------------------------------------------------

    def heldout(self) -> list[str]:
        """The held-out prompts as the policies see them (message lists rendered by pi_SFT's chat template)."""
        if self._heldout is None:
            self._heldout = load_prompts(self.files["heldout"], load_tokenizer(self.sft()))
        return self._heldout

    def reference(self):
        """pi_SFT (model, tokenizer) and its samples on the held-out prompts, loaded once."""
        if self._ref is None:
            model, tok = load_policy(self.sft())
            self._ref = (model, tok, sample(model, tok, self.heldout(), replace(self.gen, seed=self.gen.seed + 1)))
        return self._ref

    def evaluate(self, name: str, samples: list[Sample] | None = None, kl: float | None = None, wall: float | None = None) -> dict:
        """Held-out metrics of one policy (its directory ``OUT/name``, or given samples), cached by
        the model's digest so unchanged policies are not re-sampled."""
        self.wait(name)
        ref_model, tok, ref_samples = self.reference()
        cache = self.out / "eval" / f"{name}.json"
        key = digest([self.path(name)]) if samples is None else None
        if key and cache.exists():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and saved.get("n") == len(ref_samples):
                return {**saved, **self.alarms(name)}
        s = time.perf_counter()
        if samples is None:
            model, tok = load_policy(self.path(name))
            samples = sample(model, tok, self.heldout(), self.gen)
            kl_stats = kl_to_reference(samples, ref_model, tok, self.gen.temperature or 1.0)
            wall_file = self.out / name / "wall_seconds"
            wall = float(wall_file.read_text()) if wall_file.exists() else None
        else:
            kl_stats = {"kl": kl, "kl_ci95": None}  # best-of-n: analytic; the demonstrator: none
        result = {
            **evaluate_samples(samples),
            **kl_stats,
            **win_rate(samples, ref_samples),
            "gold_per_prompt": [lists.gold_reward(x.prompt, x.completion, x.ended) for x in samples],
            "examples": [x.completion for x in samples[:6]],
            "wall_s": wall,
            "eval_s": round(time.perf_counter() - s, 1),
            "key": key,
        }
        write_atomic(cache, json.dumps(result) + "\n")  # makes its directory
        return {**result, **self.alarms(name)}

    def alarms(self, name: str) -> dict:
        """``{"alarms": "RULE at step N, ..."}`` (or ``"none"``) for a policy whose run watches for
        alarms (:mod:`preftune.alarms`; its ``alarm/*`` rows in metrics.jsonl); ``{}`` for any other."""
        run = self.out / name
        if not (run / "run_config.json").exists() or "alarm" not in json.loads((run / "run_config.json").read_text()):
            return {}
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {"alarms": ", ".join(f"{rule} at step {step}" for step, rule in raised(rows)) or "none"}

    def best_of_n(self, reward_dir: str, n: int) -> dict:
        s = time.perf_counter()
        model, tok, _ = self.reference()
        candidates = sample(model, tok, self.heldout(), replace(self.gen, seed=self.gen.seed + 2), n=n)
        best = pick_best(Scorer(reward_dir).score_all(candidates, tok.pad_token_id), n).tolist()
        return self.evaluate("best-of-n", [candidates[i] for i in best], kl=best_of_n_kl(n), wall=round(time.perf_counter() - s, 1))

    def demonstrator(self) -> dict:
        return self.evaluate("demonstrator", demonstrator_samples(self.heldout(), self.gen.seed, self.reference()[1]))
