"""Decode speed: preftune's sampler against transformers' ``generate`` on the same prompts, and against
the matmul-bound rate of the same model on this machine, in one process.

    python bench/bench_decode.py --model gpt2 --assets DIR     # the shared workload's GPT-2: 32 prompts x 48 tokens
    python bench/bench_decode.py --model 135m                  # SmolLM2-135M's shape (random weights): 32 x 32

Both sample at temperature 1 from the whole vocabulary, every row to ``max_new_tokens`` (EOS is
never a stop, so both make exactly rows × tokens), fp32 and bf16 weights, 2 threads. Each is timed
``--reps`` times after one untimed call; the median is kept. The matmul-bound rate is the tokens/s of
one full forward of (rows, 64) tokens — the rate decoding would reach if a step cost its share of a
prefill. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from preftune import decode
from preftune.config import SamplingConfig

SHAPES = Path(__file__).resolve().parent.parent / "configs" / "shapes"
SETTINGS = {"gpt2": (32, 48), "135m": (32, 32)}  # model: (rows, new tokens)


def workload_gpt2(assets: Path, rows: int):
    from preftune.data import collate, encode, load_prompts
    from preftune.models import load_policy

    model, tokenizer = load_policy(str(assets / "gpt2-tiny"))
    prompts = load_prompts(assets / "prompts.jsonl")[:rows]
    batch = collate([encode(tokenizer, p, "", 97, 96, add_eos=False) for p in prompts], tokenizer.pad_token_id, padding_side="left")
    return model, batch.input_ids, batch.attention_mask


def smollm2_shape(rows: int):
    """SmolLM2-135M's architecture with random weights; prompts of 30-48 random tokens, left-padded."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in json.loads((SHAPES / "smollm2-135m.json").read_text()).items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(30, 49, (rows,), generator=gen)
    L = int(lengths.max())
    ids = torch.randint(3, config.vocab_size, (rows, L), generator=gen)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    ids = ids.masked_fill(~mask, config.pad_token_id)
    return model, ids, mask


def timed(fn, reps: int) -> float:
    fn()  # one untimed call: allocator, kernels, caches
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model, ids, mask, new: int, reps: int) -> dict:
    rows = ids.shape[0]
    cfg = SamplingConfig(max_new_tokens=new, temperature=1.0, seed=0)
    run = decode.choose(model)

    def preftune():
        gen = torch.Generator().manual_seed(cfg.seed)
        out = run(model, ids, mask, 1, new, -1, decode.sampler(cfg, gen, rows, ids.device))  # EOS -1: every row runs to the end
        assert out.steps == new

    def hf_generate():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask.long(),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=model.config.pad_token_id or 0,
            disable_compile=True,
        )
        assert out.shape[1] == ids.shape[1] + new

    prefill = torch.randint(3, model.config.vocab_size, (rows, 64))

    def forward():
        model(input_ids=prefill)

    with torch.no_grad():
        t_ours, t_hf, t_fwd = timed(preftune, reps), timed(hf_generate, reps), timed(forward, reps)
    return {
        "preftune_tokens_per_s": rows * new / t_ours,
        "generate_tokens_per_s": rows * new / t_hf,
        "ratio": t_hf / t_ours,
        "matmul_bound_tokens_per_s": rows * 64 / t_fwd,
        "fraction_of_bound": (rows * new / t_ours) / (rows * 64 / t_fwd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--assets", help="the workload's assets (for --model gpt2)")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows, new = SETTINGS[a.model]
    if a.model == "gpt2":
        if not a.assets:
            ap.error("--model gpt2 needs --assets")
        model, ids, mask = workload_gpt2(Path(a.assets), rows)
    else:
        model, ids, mask = smollm2_shape(rows)
    model.eval()
    result = {"model": a.model, "rows": rows, "new_tokens": new, "params": sum(p.numel() for p in model.parameters())}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result[precision] = measure(model.to(dtype), ids, mask, new, a.reps)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
