"""Every configuration of preftune, as frozen dataclasses with one line of documentation per field.

The rule: ``preftune X`` takes one ``XConfig`` (``preftune best-of-n``: ``BestOfNConfig``,
``preftune label serve``: ``LabelServeConfig``), defined in :mod:`.commands` and nowhere else. A
config may hold the shared groups of :mod:`.groups` — :class:`TrainConfig` (flags ``--train.*``),
:class:`TokenConfig` (``--tokens.*``) and :class:`SamplingConfig` (``--gen.*``); the command line is
generated from these classes (:mod:`preftune.cli`), so ``--help`` shows the same lines. Fields
(declared with :func:`.fields.doc`) with ``required=True`` must be given; defaults run on a CPU.
Every run saves its resolved config as ``run_config.json`` (:func:`save_config`), and ``--config
run_config.json`` replays it (:func:`override`).
"""

from .commands import (
    AnnotateConfig,
    BestOfNConfig,
    DemoConfig,
    DPOConfig,
    EvalConfig,
    ExperimentConfig,
    GenerateConfig,
    ImportConfig,
    IterateConfig,
    LabelExportConfig,
    LabelsConfig,
    LabelServeConfig,
    LabelStatsConfig,
    MemoryConfig,
    PlotConfig,
    PretrainConfig,
    ReportConfig,
    RewardConfig,
    RLConfig,
    SampleConfig,
    ScoreConfig,
    SFTConfig,
    WorldConfig,
)
from .fields import device_field, doc, load_config, override, save_config, to_dict
from .groups import PREFERENCE_LOSSES, REPORT_TO, RL_ALGORITHMS, AlarmConfig, SamplingConfig, TokenConfig, TrainConfig

__all__ = [
    "AnnotateConfig",
    "BestOfNConfig",
    "DPOConfig",
    "DemoConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GenerateConfig",
    "ImportConfig",
    "IterateConfig",
    "LabelExportConfig",
    "LabelServeConfig",
    "LabelStatsConfig",
    "LabelsConfig",
    "MemoryConfig",
    "PREFERENCE_LOSSES",
    "PlotConfig",
    "PretrainConfig",
    "REPORT_TO",
    "RLConfig",
    "RL_ALGORITHMS",
    "ReportConfig",
    "RewardConfig",
    "SFTConfig",
    "SampleConfig",
    "AlarmConfig",
    "SamplingConfig",
    "ScoreConfig",
    "TokenConfig",
    "TrainConfig",
    "WorldConfig",
    "device_field",
    "doc",
    "load_config",
    "override",
    "save_config",
    "to_dict",
]
