"""One module per pipeline step; each command is a function of its config (:mod:`preftune.config`).

=====================  ==========================================  ===========================
module                 commands                                    config classes
=====================  ==========================================  ===========================
``world``              world                                       WorldConfig
``model``              import                                      ImportConfig
``sft``                pretrain, sft                               PretrainConfig, SFTConfig
``sample``             sample, annotate                            SampleConfig, AnnotateConfig
``reward``             reward, score                               RewardConfig, ScoreConfig
``dpo``                dpo                                         DPOConfig
``rl``                 rl, best-of-n                               RLConfig, BestOfNConfig
``iterate``            iterate                                     IterateConfig
``eval``               generate, eval                              GenerateConfig, EvalConfig
``label``              label serve | export | stats                LabelServeConfig, ...
``experiment``         demo, experiment, report                    DemoConfig, ExperimentConfig, ReportConfig
``memory``             memory                                      MemoryConfig
``plot``               plot                                        PlotConfig
=====================  ==========================================  ===========================

Shared helpers are in :mod:`.common`; command modules do not import each other.
"""

from __future__ import annotations

from .. import config as c

# name: (one-line help, config class, "module:function"), imported only when the command runs
COMMANDS: dict[str, tuple[str, type, str]] = {
    "world": ("write the built-in world's data files (corpus, demonstrations, prompts)", c.WorldConfig, "world:world"),
    "import": ("convert a GGUF model file (llama.cpp's) into a model directory preftune trains", c.ImportConfig, "model:import_model"),
    "pretrain": ("train a tokenizer and a tiny base LM from scratch on a text corpus", c.PretrainConfig, "sft:pretrain"),
    "sft": ("supervised fine-tuning on demonstrations (completion-only loss; --lora)", c.SFTConfig, "sft:sft"),
    "generate": ("sample completions for prompts", c.GenerateConfig, "eval:generate"),
    "sample": ("K completions per prompt, ready for labelling", c.SampleConfig, "sample:sample_sets"),
    "annotate": ("label sampled sets (--simulated: the world's Bradley–Terry annotators)", c.AnnotateConfig, "sample:annotate"),
    "reward": ("train a Bradley–Terry reward model from pi_SFT, centre it, evaluate it", c.RewardConfig, "reward:reward"),
    "score": ("score (prompt, completion) rows with a reward model", c.ScoreConfig, "reward:score"),
    "dpo": ("direct preference optimisation: dpo, cdpo, ipo, hinge, soft, simpo, unlikelihood", c.DPOConfig, "dpo:dpo"),
    "rl": ("RLHF against a reward model with a KL leash: raft, reinforce, rloo, grpo, ppo", c.RLConfig, "rl:rl"),
    "iterate": (
        "rounds of sample -> label (simulated or --labels web, chosen actively) -> reward model -> policy",
        c.IterateConfig,
        "iterate:iterate",
    ),
    "best-of-n": ("sample n, keep the best by reward (KL log n - (n-1)/n)", c.BestOfNConfig, "rl:best_of_n"),
    "eval": ("gold reward, length, diversity of policies on the lists world", c.EvalConfig, "eval:evaluate"),
    "demo": ("the whole pipeline and every experiment on the built-in world, with report.html", c.DemoConfig, "experiment:demo"),
    "experiment": ("run experiments from a file (configs/*.yaml)", c.ExperimentConfig, "experiment:experiment"),
    "memory": ("estimate each trainer's memory per process for a model's config", c.MemoryConfig, "memory:memory"),
    "report": ("re-render report.html and its figures from a run's results.json", c.ReportConfig, "experiment:report"),
    "plot": ("draw a training run's curves (metrics.jsonl, iterations.jsonl) into a PNG", c.PlotConfig, "plot:plot"),
}
LABEL_COMMANDS: dict[str, tuple[str, type, str]] = {
    "serve": ("the labelling web page (8-point A/B scale)", c.LabelServeConfig, "label:serve"),
    "export": ("labels as comparison rows for `reward` and `dpo`", c.LabelExportConfig, "label:export"),
    "stats": ("inter-annotator agreement and position bias", c.LabelStatsConfig, "label:show_stats"),
}


def resolve(target: str):
    """The function named by ``"module:function"`` in this package."""
    import importlib

    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)
