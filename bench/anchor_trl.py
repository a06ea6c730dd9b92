"""One of the shared workload's TRL scripts with another model or precision: run in TRL's environment
(``.anchor/venv``), never preftune's; it imports nothing of preftune.

    .anchor/venv/bin/python bench/anchor_trl.py --workload W --model-dir DIR --precision bf16 bench_sft.py --steps 10 --batch 8

The workload's scripts read their model from ``ASSETS/gpt2-tiny`` and train in fp32 (``bf16=False`` in
their shared ``common_args``). This sets the model directory and TrainingArguments' ``bf16`` (autocast
over fp32 weights, as preftune's ``--train.precision bf16``) in the scripts' shared module, then runs
the script as ``__main__`` with the remaining arguments, so everything else is the workload's own code.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="the shared workload's directory (its bench_*.py and _common.py)")
    ap.add_argument("--model-dir", help="the model the script trains instead of ASSETS/gpt2-tiny")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("script", help="the workload's script, e.g. bench_sft.py")
    a, rest = ap.parse_known_args()
    workload = Path(a.workload).resolve()
    sys.path.insert(0, str(workload))
    import _common as C  # the module every script imports: offline environment, threads, shared arguments

    if a.model_dir:
        C.MODEL_DIR = str(Path(a.model_dir).resolve())
    shared = C.common_args
    C.common_args = lambda: {**shared(), "bf16": a.precision == "bf16"}
    sys.argv = [str(workload / a.script), *rest]
    runpy.run_path(str(workload / a.script), run_name="__main__")


if __name__ == "__main__":
    main()
