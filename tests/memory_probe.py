"""Peak resident memory of one trainer run, for tests/test_memory.py.

    python tests/memory_probe.py TRAINER MODEL_DIR DATA_DIR OUT BATCH SEQ_LEN [EXTRA FLAGS...]

Imports everything first, then resets the kernel's high-water mark (``/proc/self/clear_refs``), runs
``preftune TRAINER`` in this process and prints ``{"baseline": bytes, "peak": bytes}`` as JSON: the
resident memory before the command (interpreter, torch, transformers) and the highest during it.
"""

import json
import re
import sys

import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification  # noqa: F401

import preftune.commands.dpo  # noqa: F401  (imported before the baseline)
import preftune.commands.reward  # noqa: F401
import preftune.commands.sft  # noqa: F401
from preftune.cli import main


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


if __name__ == "__main__":
    trainer, model, data, out, batch, seq, *extra = sys.argv[1:]
    torch.set_num_threads(2)
    file = f"{data}/{'sft' if trainer == 'sft' else 'pairs'}.jsonl"
    args = [
        trainer,
        "--model",
        model,
        "--data",
        file,
        "--train.out",
        out,
        "--train.batch-size",
        batch,
        "--train.max-steps",
        "2",
    ]  # step 2 is the first with AdamW's states
    args += ["--tokens.max-length", seq, "--tokens.max-prompt-length", str(int(seq) // 2), "--train.no-progress", "--train.save-every", "0"]
    args += ["--train.eval-every", "0", *(["--no-world-eval"] if trainer == "reward" else []), *extra]
    baseline = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    assert main(args) == 0
    print(json.dumps({"baseline": baseline, "peak": _status("VmHWM")}))
