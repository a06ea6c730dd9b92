"""The lecture's experiments on the built-in world, and ``preftune demo`` / ``preftune experiment``.

Every experiment shares one pipeline — world → pretrain → SFT → pi_SFT samples → simulated
comparisons → reward model — built by :class:`Pipeline`, whose stages are reused when their config
and inputs are unchanged (a second run, or a run after an interruption, only does what is missing).
An experiment file (``configs/*.yaml``) names the experiments to run and their settings::

    out: runs/frontier
    seed: 0
    experiments:
      frontier: {dpo: [0.1, 0.5, 2.0], ppo: [0.03, 0.1, 0.3], rloo: [0.03, 0.1, 0.3]}

Results go to ``OUT/results.json``; :mod:`preftune.report` renders ``OUT/report.html`` from it.
Every sentence of the report that states a result is computed here, in ``claims``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .config import GenerateConfig, PretrainConfig, SFTConfig, TokenConfig, TrainConfig, doc, to_dict
from .data import load_prompts, write_jsonl
from .direct import DPOConfig, dpo
from .evaluate import demonstrator_samples, evaluate_samples, kl_to_reference, mean_ci, paired_bootstrap, win_rate
from .models import load_policy
from .preferences import AnnotateCommand, RewardConfig, SampleCommand, annotate, reward, sample_sets
from .report import render, summary_table
from .rl import RLConfig, Scorer, best_of_n_kl, pick_best, rl, score_samples
from .rollout import Sample, sample
from .stages import pretrain, set_threads, sft
from .world import WorldConfig, lists, write_world

# The headline table's rows, in the report's order.
HEADLINE = ("base", "demonstrator", "sft", "best-of-n", "raft", "reinforce", "rloo", "ppo", "dpo", "ipo", "unlikelihood")
# What `preftune demo` runs; configs/demo.yaml holds the same (a test keeps them equal).
DEMO_EXPERIMENTS: dict[str, dict] = {
    "methods": {"best_of_n": 16},
    "frontier": {"dpo": [0.1, 0.5, 2.0], "ppo": [0.03, 0.1, 0.3], "rloo": [0.03, 0.1, 0.3]},
    "overoptimisation": {"comparisons": 300, "algo": "rloo", "iterations": 32, "lr": 1e-3},
    "diverse": {"minority": 0.5, "epochs": 2.0},
}


@dataclass(frozen=True)
class DemoConfig:
    out: str = doc("runs/demo", "directory for data, models, results.json and report.html")
    quick: bool = doc(False, "a much smaller run (a couple of minutes) for smoke tests")
    seed: int = doc(0, "seed for the world, training and sampling")


@dataclass(frozen=True)
class ExperimentCommand:
    config: str = doc("", "experiment file (YAML), e.g. configs/frontier.yaml", positional=True)
    out: str = doc("", "output directory (default: the file's 'out')")
    quick: bool = doc(False, "run at the quick demo's scale")


# ------------------------------------------------------------------------------ stage reuse


def _digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).is_file() else (Path(p) / "model.safetensors").read_bytes())
    return h.hexdigest()


def _made_from(out: Path, cfg, digest: str) -> bool:
    """True if the run in ``out`` was started from exactly ``cfg`` and inputs with this digest."""
    saved, stamp = out / "run_config.json", out / "inputs.sha256"
    if not saved.exists() or not stamp.exists() or stamp.read_text() != digest:
        return False
    old = json.loads(saved.read_text())
    return all(old.get(k) == v for k, v in to_dict(cfg).items())


def _run_stage(name: str, stage, cfg, inputs: list[str], timings: dict) -> bool:
    """Run a training stage unless its output is fresh; returns True if it ran. A run interrupted
    with the same config and inputs resumes from its checkpoint; anything else is removed."""
    s = time.perf_counter()
    out = Path(cfg.train.out)
    digest = _digest(inputs)
    resumable = _made_from(out, cfg, digest)
    if resumable and (out / "config.json").exists():  # finished: save_model moves config.json in last
        print(f"{name}: reusing {out} (same config and inputs)")
        return False
    if not resumable:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)  # not fresh until the stage finishes again
    (out / "inputs.sha256").write_text(digest)
    stage(replace(cfg, train=replace(cfg.train, resume=resumable)))
    timings[name] = round(time.perf_counter() - s, 1)
    (out / "wall_seconds").write_text(str(timings[name]))
    return True


def _wall(out: Path) -> float | None:
    f = out / "wall_seconds"
    return float(f.read_text()) if f.exists() else None


# -------------------------------------------------------------------------------- the pipeline


class Pipeline:
    """The shared stages, built on first use, plus evaluation of policies on held-out prompts."""

    def __init__(self, out: str | Path, seed: int = 0, quick: bool = False):
        self.out, self.seed, self.quick = Path(out), seed, quick
        self.timings: dict[str, float] = {}
        self._files: dict[str, Path] | None = None
        self._ref = None
        self._sft_ready = False
        self._samples: str | None = None
        self._labelled: set[str] = set()
        self.gen = GenerateConfig(seed=seed)
        # quick: a smoke-test scale; the full scale's numbers are in the README
        self.n_iter = 6 if quick else 24  # `preftune rl` defaults to 40; 24 keeps `make demo` inside 15 minutes
        self.dpo_epochs = 1.0 if quick else 2.0  # 2, not `preftune dpo`'s 3: the demo's seven DPO-family runs must fit its 15 minutes

    def path(self, name: str) -> str:
        return str(self.out / name)

    # -- data and models --------------------------------------------------------------------

    @property
    def files(self) -> dict[str, Path]:
        if self._files is None:
            sizes = {"corpus": 3000, "sft": 800, "prompts": 300, "heldout": 100} if self.quick else {"sft": 10000}
            self._files = write_world(WorldConfig(out=self.path("data"), seed=self.seed, **sizes))
        return self._files

    def sft(self) -> str:
        if self._sft_ready:
            return self.path("sft")
        tokens = TokenConfig(max_length=64, max_prompt_length=48)
        base = PretrainConfig(
            data=str(self.files["corpus"]),
            tokens=tokens,
            train=TrainConfig(
                out=self.path("base"), epochs=1.0 if self.quick else 1.5, batch_size=64, lr=3e-3, seed=self.seed, save_every=100
            ),
        )
        cfg = SFTConfig(
            model=self.path("base"),
            data=str(self.files["sft"]),
            tokens=tokens,
            # Many passes over many demonstrations: a tiny model needs them to come close to the
            # demonstrator (8 epochs: 0.644 against its 0.723; 6 fit the demo's 15 minutes).
            train=TrainConfig(
                out=self.path("sft"), epochs=2.0 if self.quick else 6.0, batch_size=64, lr=2e-3, seed=self.seed, save_every=200
            ),
        )
        _run_stage("pretrain", pretrain, base, [str(self.files["corpus"])], self.timings)
        _run_stage("sft", sft, cfg, [str(self.files["sft"]), self.path("base")], self.timings)
        self._sft_ready = True
        return self.path("sft")

    def samples(self) -> str:
        """K = 4 samples of pi_SFT per training prompt: the material every comparison is made of."""
        if self._samples:
            return self._samples
        out = self.out / "data/samples.jsonl"
        stamp = out.with_suffix(".sha256")
        digest = _digest([str(self.files["prompts"]), self.sft()])
        if not (out.exists() and stamp.exists() and stamp.read_text() == digest):
            s = time.perf_counter()
            sample_sets(SampleCommand(model=self.sft(), prompts=str(self.files["prompts"]), out=str(out), k=4, gen=self.gen))
            stamp.write_text(digest)
            self.timings["sample"] = round(time.perf_counter() - s, 1)
        self._samples = str(out)
        return self._samples

    def labels(self, name: str, fmt: str = "pairs", minority: float = 0.0, limit: int = 0) -> str:
        """Simulated labels of the samples (cheap and deterministic: written once per run)."""
        out = self.out / f"data/{name}.jsonl"
        if name in self._labelled:
            return str(out)
        self._labelled.add(name)
        annotate(AnnotateCommand(samples=self.samples(), out=str(out), simulated=True, format=fmt, minority=minority, seed=self.seed))
        if limit:
            rows = [json.loads(line) for line in out.read_text().splitlines()][:limit]
            write_jsonl(out, rows)
        return str(out)

    def reward_model(self, name: str = "rm", limit: int = 0) -> tuple[str, dict]:
        """A reward model on K = 4 rankings of pi_SFT samples (``limit``: only the first N)."""
        data = self.labels(f"rankings{limit or ''}", "rankings", limit=limit)
        train = replace(RewardConfig().train, out=self.path(name), seed=self.seed, epochs=1.0 if self.quick else 3.0, progress=True)
        cfg = RewardConfig(model=self.sft(), data=data, train=train, eval_prompts=str(self.files["heldout"]))
        _run_stage(name, reward, cfg, [data, self.sft()], self.timings)
        return self.path(name), json.loads((self.out / name / "eval.json").read_text())

    def rl_policy(self, name: str, algo: str, reward_dir: str, **kw: Any) -> str:
        train = replace(RLConfig().train, out=self.path(name), seed=self.seed)
        cfg = RLConfig(
            model=self.sft(), reward=reward_dir, prompts=str(self.files["prompts"]), algo=algo, iterations=self.n_iter, train=train, **kw
        )
        _run_stage(name, rl, cfg, [str(self.files["prompts"]), self.sft(), reward_dir], self.timings)
        return self.path(name)

    def dpo_policy(self, name: str, data: str, loss: str = "dpo", epochs: float | None = None, **kw: Any) -> str:
        train = replace(DPOConfig().train, out=self.path(name), epochs=epochs or self.dpo_epochs, seed=self.seed)
        _run_stage(name, dpo, DPOConfig(model=self.sft(), data=data, loss=loss, train=train, **kw), [data, self.sft()], self.timings)
        return self.path(name)

    # -- evaluation -------------------------------------------------------------------------

    def heldout(self) -> list[str]:
        return load_prompts(self.files["heldout"])

    def _reference(self):
        if self._ref is None:
            model, tok = load_policy(self.sft())
            prompts = self.heldout()
            self._ref = (model, tok, sample(model, tok, prompts, replace(self.gen, seed=self.gen.seed + 1)))
        return self._ref

    def evaluate(self, name: str, samples: list[Sample] | None = None, kl: float | None = None, wall: float | None = None) -> dict:
        """Held-out metrics of one policy (its directory ``OUT/name``, or given samples), cached by
        the model's digest so unchanged policies are not re-sampled."""
        ref_model, tok, ref_samples = self._reference()
        cache = self.out / "eval" / f"{name}.json"
        key = _digest([self.path(name)]) if samples is None else None
        if key and cache.exists():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and saved.get("n") == len(ref_samples):
                return saved
        s = time.perf_counter()
        if samples is None:
            model, tok = load_policy(self.path(name))
            samples = sample(model, tok, self.heldout(), self.gen)
            kl_stats = kl_to_reference(samples, ref_model, tok, self.gen.temperature or 1.0)
            wall = _wall(self.out / name)
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
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result) + "\n")
        return result

    def best_of_n(self, reward_dir: str, n: int) -> dict:
        s = time.perf_counter()
        model, tok, _ = self._reference()  # pi_SFT, already loaded
        cands = sample(model, tok, self.heldout(), replace(self.gen, seed=self.gen.seed + 2), n=n)
        scores = score_samples(Scorer(reward_dir), cands, tok.pad_token_id)
        best = pick_best(scores, n).tolist()
        return self.evaluate("best-of-n", [cands[i] for i in best], kl=best_of_n_kl(n), wall=round(time.perf_counter() - s, 1))

    def demonstrator(self) -> dict:
        return self.evaluate("demonstrator", demonstrator_samples(self.heldout(), self.gen.seed, self._reference()[1]))


# -------------------------------------------------------------------------------- experiments


def _diff(a: dict, b: dict, seed: int) -> dict:
    """a - b in mean gold reward over the same prompts, with a paired-bootstrap 95% interval."""
    d, lo, hi = paired_bootstrap(a["gold_per_prompt"], b["gold_per_prompt"], seed=seed)
    return {"diff": d, "lo": lo, "hi": hi, "significant": lo > 0 or hi < 0}


def methods(p: Pipeline, res: dict, params: dict) -> None:
    """The headline table: every method from the same pi_SFT, comparisons and reward model."""
    rm_dir, rm_eval = p.reward_model()
    res["reward_model"] = {
        k: rm_eval[k] for k in ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold", "held_out_pairs")
    }
    pairs = p.labels("comparisons", "pairs")
    pol = res["policies"]
    pol["base"] = p.evaluate("base")
    pol["demonstrator"] = p.demonstrator()
    pol["sft"] = p.evaluate("sft")
    n = int(params.get("best_of_n", 16))
    pol["best-of-n"] = {**p.best_of_n(rm_dir, n), "n_samples": n}
    for algo in ("raft", "reinforce", "rloo", "ppo"):
        p.rl_policy(algo, algo, rm_dir)
        pol[algo] = {**p.evaluate(algo), "beta": RLConfig().beta}
    for loss in ("dpo", "ipo", "unlikelihood"):
        p.dpo_policy(loss, pairs, loss)
        pol[loss] = {**p.evaluate(loss), "beta": None if loss == "unlikelihood" else DPOConfig().beta}
    demo_, sft_ = pol["demonstrator"], pol["sft"]
    claims = res["claims"]
    claims["sft_vs_demonstrator"] = _diff(sft_, demo_, p.seed)
    for name in ("best-of-n", "raft", "reinforce", "rloo", "ppo", "dpo", "ipo", "unlikelihood"):
        claims[f"{name}_vs_sft"] = _diff(pol[name], sft_, p.seed)
        claims[f"{name}_vs_demonstrator"] = _diff(pol[name], demo_, p.seed)
    claims["dpo_vs_ppo"] = _diff(pol["dpo"], pol["ppo"], p.seed)
    claims["dpo_vs_rloo"] = _diff(pol["dpo"], pol["rloo"], p.seed)
    tuned = [m for m in ("raft", "reinforce", "rloo", "ppo", "dpo", "ipo") if claims[f"{m}_vs_demonstrator"]["lo"] > 0]
    claims["beat_demonstrator"] = {"methods": tuned, "count": len(tuned), "of": 6}


def frontier(p: Pipeline, res: dict, params: dict) -> None:
    """Gold reward against KL to pi_SFT, several β per method (the DPO paper's figure 2)."""
    rm_dir, _ = p.reward_model()
    pairs = p.labels("comparisons", "pairs")
    points = res.setdefault("frontier", {})
    grid = params or DEMO_EXPERIMENTS["frontier"]
    for method, betas in grid.items():
        points[method] = []
        for beta in betas:
            default = DPOConfig().beta if method == "dpo" else RLConfig().beta
            name = method if float(beta) == default else f"{method}-beta{beta:g}"  # the default-β point is the methods table's run
            if method == "dpo":
                p.dpo_policy(name, pairs, "dpo", beta=float(beta))
            else:
                p.rl_policy(name, method, rm_dir, beta=float(beta))
            m = p.evaluate(name)
            points[method].append(
                {"beta": float(beta), "gold": m["gold"], "gold_ci95": m["gold_ci95"], "kl": m["kl"], "kl_ci95": m["kl_ci95"]}
            )
    best = {m: max(v, key=lambda r: r["gold"]) for m, v in points.items()}
    res["claims"]["frontier_best"] = {m: {"beta": r["beta"], "gold": r["gold"], "kl": r["kl"]} for m, r in best.items()}


def overoptimisation(p: Pipeline, res: dict, params: dict) -> None:
    """RL against a reward model trained on few comparisons, with β = 0 and the default β:
    proxy score and gold reward per iteration, against KL (Gao et al.'s curve)."""
    few = 60 if p.quick else int(params.get("comparisons", 300))
    algo = params.get("algo", "rloo")
    iterations = p.n_iter * 2 if p.quick else int(params.get("iterations", p.n_iter))
    lr = float(params.get("lr", RLConfig().train.lr))  # the demo uses 1e-3: over-optimisation within its budget
    rm_dir, rm_eval = p.reward_model(f"rm-few{few}", limit=few)
    runs = []
    for beta in (0.0, RLConfig().beta):
        name = f"overopt/{algo}-beta{beta:g}"
        train = replace(RLConfig().train, out=p.path(name), seed=p.seed, lr=lr)
        cfg = RLConfig(
            model=p.sft(), reward=rm_dir, prompts=str(p.files["prompts"]), algo=algo, iterations=iterations, beta=beta, train=train
        )
        _run_stage(name, rl, cfg, [str(p.files["prompts"]), p.sft(), rm_dir], p.timings)
        rows = [json.loads(line) for line in (p.out / name / "iterations.jsonl").read_text().splitlines()]
        curve = [{"iteration": r["iteration"], "kl": r["kl"], "proxy": r["score"], "gold": r["gold"]} for r in rows]
        peak = max(curve, key=lambda r: r["gold"])
        summary = {
            "proxy_start": curve[0]["proxy"],
            "proxy_end": curve[-1]["proxy"],
            "proxy_change": curve[-1]["proxy"] - curve[0]["proxy"],
            "gold_start": curve[0]["gold"],
            "gold_end": curve[-1]["gold"],
            "gold_change": curve[-1]["gold"] - curve[0]["gold"],
            "gold_peak": peak["gold"],
            "kl_peak": peak["kl"],
            "kl_end": curve[-1]["kl"],
            "overoptimised": curve[-1]["proxy"] > curve[0]["proxy"] and curve[-1]["gold"] < curve[0]["gold"] - 0.1,
        }
        runs.append({"beta": beta, "curve": curve, "summary": summary})
    res["overoptimisation"] = {
        "algo": algo,
        "comparisons": few,
        "iterations": iterations,
        "reward_model": {k: rm_eval[k] for k in ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")},
        "runs": runs,
    }


def diverse(p: Pipeline, res: dict, params: dict) -> None:
    """Two annotator groups: a majority wanting k items and a minority wanting k + 2. A policy tuned
    on the pooled comparisons against one conditioned on the group (a tag in the prompt)."""
    share = float(params.get("minority", 0.5))
    pooled = p.labels("comparisons-mixed", "pairs", minority=share)
    rows = [json.loads(line) for line in Path(pooled).read_text().splitlines()]
    tagged = [{**r, "prompt": lists.tag_prompt(r["prompt"], r["group"])} for r in rows]
    tagged_path = p.out / "data/comparisons-mixed-tagged.jsonl"
    write_jsonl(tagged_path, tagged)
    epochs = 1.0 if p.quick else float(params.get("epochs", 2.0))
    p.dpo_policy("diverse/pooled", pooled, epochs=epochs)
    p.dpo_policy("diverse/conditioned", str(tagged_path), epochs=epochs)
    table = []
    prompts = p.heldout()
    for policy in ("sft", "diverse/pooled", "diverse/conditioned"):
        model, tok = load_policy(p.path(policy))
        for group, extra in (("majority", 0), ("minority", 2)):
            asked = [lists.tag_prompt(q, group) for q in prompts] if policy == "diverse/conditioned" else prompts
            outs = sample(model, tok, asked, p.gen)
            u = [lists.utility(q, s.completion, s.ended, extra) for q, s in zip(prompts, outs)]
            mean, ci = mean_ci(u)
            table.append(
                {
                    "policy": policy,
                    "group": group,
                    "utility": mean,
                    "ci95": ci,
                    "length_items": statistics.fmean(len(lists.parse_items(s.completion)) for s in outs),
                }
            )
    res["diverse"] = {"minority_share": share, "rows": table}
    get = {(r["policy"], r["group"]): r["utility"] for r in table}
    res["claims"]["diverse"] = {
        "pooled_minority": get[("diverse/pooled", "minority")],
        "conditioned_minority": get[("diverse/conditioned", "minority")],
        "pooled_majority": get[("diverse/pooled", "majority")],
        "conditioned_majority": get[("diverse/conditioned", "majority")],
        "minority_gain": get[("diverse/conditioned", "minority")] - get[("diverse/pooled", "minority")],
    }


RUNNERS = {"methods": methods, "frontier": frontier, "overoptimisation": overoptimisation, "diverse": diverse}


def run(out: str | Path, experiments: dict[str, dict], seed: int = 0, quick: bool = False, config: dict | None = None) -> dict:
    """Run the named experiments into ``out``; writes results.json and report.html."""
    set_threads()
    unknown = sorted(set(experiments) - set(RUNNERS))
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {sorted(RUNNERS)}")
    t0 = time.perf_counter()
    p = Pipeline(out, seed, quick)
    res: dict[str, Any] = {"preftune": __version__, "config": config or {}, "policies": {}, "claims": {}}
    p.sft()
    for name, params in experiments.items():
        print(f"\n=== {name} ===")
        RUNNERS[name](p, res, params or {})
    if "sft" not in res["policies"]:
        res["policies"]["sft"] = p.evaluate("sft")
    res["heldout_prompts"] = len(p.heldout())
    res["seconds"] = {**p.timings, "total": round(time.perf_counter() - t0, 1)}
    res["samples"] = [
        {"prompt": q, "completions": {k: v["examples"][i] for k, v in res["policies"].items() if len(v.get("examples", [])) > i}}
        for i, q in enumerate(p.heldout()[:6])
    ]
    (p.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")

    print("\n" + summary_table(res))
    html = render(p.out)
    print(f"\nwrote {p.out / 'results.json'} and {html}  ({res['seconds']['total']} s)")
    return res


def demo(cfg: DemoConfig) -> dict:
    return run(cfg.out, DEMO_EXPERIMENTS, cfg.seed, cfg.quick, to_dict(cfg))


def experiment(cfg: ExperimentCommand) -> dict:
    import yaml

    path = Path(cfg.config)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such experiment file")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("experiments"), dict):
        raise ValueError(f"{path}: expected a mapping with 'experiments: {{name: settings}}' (see configs/)")
    out = cfg.out or spec.get("out") or f"runs/{path.stem}"
    return run(out, spec["experiments"], int(spec.get("seed", 0)), cfg.quick or bool(spec.get("quick", False)), {"file": str(path), **spec})
