"""The experiments' pipeline: policies queued on worker processes (``--workers``)."""

import json
import os
from pathlib import Path

import pytest
import torch

from preftune.commands.common import record_config
from preftune.config import DPOConfig, TrainConfig
from preftune.experiments.pipeline import Pipeline


def report_where_it_ran(cfg):
    """A stand-in stage: says which process and how many threads ran it, and finishes like a trainer."""
    print(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))
    record_config(cfg, "dpo")
    Path(cfg.train.out, "config.json").write_text("{}")


def refuse(cfg):
    raise ValueError(f"{cfg.data}: row 3: no 'chosen' field")


def test_workers_run_policies_in_other_processes_one_thread_each_and_errors_come_back(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    p = Pipeline(tmp_path / "run", 0, {}, workers=2)
    cfg = lambda name: DPOConfig(model="m", data=str(data), train=TrainConfig(out=str(tmp_path / "run" / name)))  # noqa: E731
    try:
        p._policy("a", report_where_it_ran, cfg("a"), [str(data)])
        p._policy("b", refuse, cfg("b"), [str(data)])
        p._policy("a", refuse, cfg("a"), [str(data)])  # asked for again: the queued run stands
        p.wait("a")
        ran = json.loads((tmp_path / "run/a/train.log").read_text().splitlines()[0])
        assert ran["pid"] != os.getpid() and ran["threads"] == 1
        assert float((tmp_path / "run/a/wall_seconds").read_text()) >= 0 and "a" in p.timings
        with pytest.raises(ValueError, match="row 3: no 'chosen' field"):
            p.wait("b")
    finally:
        p.close()
    again = Pipeline(tmp_path / "run", 0, {}, workers=2)
    try:
        again._policy("a", refuse, cfg("a"), [str(data)])  # finished with the same config and inputs: reused, nothing queued
        assert again._pool is None and again._queued == {"a": None}
    finally:
        again.close()
