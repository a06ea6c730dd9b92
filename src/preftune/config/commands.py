"""Each command's config: ``preftune X`` takes ``XConfig`` (``preftune best-of-n``:
``BestOfNConfig``, ``preftune label serve``: ``LabelServeConfig``), in pipeline order."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import device_field, doc
from .groups import PREFERENCE_LOSSES, RL_ALGORITHMS, SELECTIONS, AlarmConfig, SamplingConfig, TokenConfig, TrainConfig

# ------------------------------------------------------------------- the world, pretraining, SFT


@dataclass(frozen=True)
class WorldConfig:
    out: str = doc("data/lists", "directory to write the world's data files into")
    seed: int = doc(0, "seed; the same seed gives the same files byte for byte")
    corpus: int = doc(20000, "pretraining documents (corpus.jsonl)")
    list_facts: float = doc(0.0, "share of the corpus that are sentences about lists: counts, repeats, members")
    sft: int = doc(4000, "demonstrations by the noisy demonstrator (sft.jsonl)")
    prompts: int = doc(2000, "training prompts for sampling and RL (prompts.jsonl)")
    heldout: int = doc(500, "held-out evaluation prompts, from templates never trained on (heldout.jsonl)")
    chat: bool = doc(False, "prompts and demonstrations as message lists, for a chat model's own template (the same requests and answers)")


@dataclass(frozen=True)
class ImportConfig:
    file: str = doc(
        "",
        "a GGUF model file (llama.cpp's format), or a directory holding one, e.g. SmolLM2-135M-Instruct.Q4_1.gguf",
        positional=True,
        required=True,
    )
    out: str = doc("", "directory to write the model to (save_pretrained format, fp32)", required=True)


@dataclass(frozen=True)
class PretrainConfig:
    data: str = doc("", "pretraining corpus, rows {'text'} (JSONL, JSON or Parquet)", required=True)
    tokenizer: str = doc("", "directory of an existing tokenizer; empty = train a byte-level BPE on the corpus")
    vocab_size: int = doc(1024, "vocabulary size when training a tokenizer")
    size: str = doc("tiny", "model size preset", choices=("micro", "tiny", "tiny-deep", "small"))
    arch: str = doc("llama", "model shape", choices=("llama", "gpt2"))
    device: str = device_field()
    tokens: TokenConfig = TokenConfig()
    train: TrainConfig = TrainConfig(out="runs/base", epochs=1.0, lr=3e-3, batch_size=64)


@dataclass(frozen=True)
class SFTConfig:
    model: str = doc("", "directory of the model to fine-tune (save_pretrained format)", required=True)
    data: str = doc("", "demonstrations: {'prompt','completion'} or {'messages'} rows", required=True)
    eval_data: str = doc("", "held-out demonstrations for the eval loss (optional)")
    lora: bool = doc(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    device: str = device_field()
    tokens: TokenConfig = TokenConfig()
    train: TrainConfig = TrainConfig(out="runs/sft", epochs=2.0, lr=1e-3)


# ---------------------------------------------------------------------- sampling and evaluation


@dataclass(frozen=True)
class GenerateConfig:
    model: str = doc("", "policy directory", required=True)
    prompts: str = doc("", "file of {'prompt'} rows", required=True)
    out: str = doc("", "write {'prompt','completion','ended'} JSONL here (default: print)")
    n: int = doc(1, "completions per prompt")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    device: str = device_field()
    gen: SamplingConfig = SamplingConfig()


@dataclass(frozen=True)
class EvalConfig:
    model: tuple[str, ...] = doc((), "policy directories to evaluate (several after one flag)", nargs="+", required=True)
    prompts: str = doc("", "held-out prompts of the lists world, {'prompt'} rows", required=True)
    reference: str = doc("", "reference policy (pi_SFT): adds KL to it and the gold-judged win rate against it")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    demonstrator: bool = doc(True, "also score the noisy demonstrator on the same prompts")
    json: bool = doc(False, "print one JSON object instead of the table")
    device: str = device_field()
    gen: SamplingConfig = SamplingConfig()


# --------------------------------------------------------------------- comparisons and rewards


@dataclass(frozen=True)
class SampleConfig:
    model: str = doc("", "policy directory", required=True)
    prompts: str = doc("", "file of {'prompt'} rows", required=True)
    out: str = doc("samples.jsonl", "write {'prompt','completions','ended'} rows here")
    k: int = doc(4, "completions per prompt (a pair or a K-way set)")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    device: str = device_field()
    gen: SamplingConfig = SamplingConfig()


@dataclass(frozen=True)
class LabelsConfig:
    """The experiments' simulated labels of pi_SFT's samples (an experiment file's ``pipeline.labels``)."""

    rankings: int = doc(0, "K-way rankings for the reward model: the first N sample sets (0: all)")
    pairs: int = doc(0, "pairs for the DPO family: the first N of the K/2 disjoint pairs per sample set (0: all)")
    tau: float = doc(0.1, "the simulated annotators' temperature (the reward model's Bayes bound uses the same)")


@dataclass(frozen=True)
class AnnotateConfig:
    samples: str = doc("", "output of `preftune sample` ({'prompt','completions','ended'} rows)", required=True)
    out: str = doc("comparisons.jsonl", "write comparison rows here")
    simulated: bool = doc(False, "label with the world's simulated annotators (the only labeller offline; see `preftune label`)")
    tau: float = doc(0.1, "annotator temperature: P(a > b) = sigmoid((u(a) - u(b)) / tau)")
    minority: float = doc(0.0, "share of labels from the minority group, who want k+2 items")
    format: str = doc(
        "pairs",
        "'pairs' (disjoint pairs from each set) or 'rankings' (Plackett–Luce order of the whole set)",
        choices=("pairs", "rankings"),
    )
    seed: int = doc(0, "labelling seed")


@dataclass(frozen=True)
class RewardConfig:
    model: str = doc("", "policy to initialise from (pi_SFT): same transformer, scalar head", required=True)
    data: str = doc("", "comparisons: pairs, HH-RLHF transcripts or rankings", required=True)
    eval_data: str = doc("", "held-out comparisons (default: 10 percent of --data)")
    margin: float = doc(0.0, "Bradley–Terry margin m: -log sigmoid(r_w - r_l - m)")
    use_strength: bool = doc(False, "weight each pair by its preference strength (8-point scale)")
    pool: str = doc(
        "last", "score from the last token's state, or the head's mean or sum over the completion's tokens", choices=("last", "mean", "sum")
    )
    ranking_loss: str = doc("pairs", "rankings: all K(K-1)/2 pairs, or the Plackett–Luce likelihood", choices=("pairs", "plackett-luce"))
    world_eval: bool = doc(True, "after training, evaluate against the lists world (needs --tau and the policy)")
    tau: float = doc(0.1, "the simulated annotators' temperature, for the Bayes-optimal accuracy")
    eval_prompts: str = doc("", "prompts for the Spearman check on fresh policy samples (default: the held-out prompts)")
    lora: bool = doc(False, "train LoRA adapters on the transformer (peft) and the scalar head whole, instead of all weights")
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    device: str = device_field()
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)
    # lr 3e-4 beat 1e-3 and 1e-4 on the lists world (README: "Reward model"); early stopping keeps the best.
    train: TrainConfig = TrainConfig(out="runs/rm", epochs=3.0, lr=3e-4, batch_size=8, eval_every=100, patience=5, dropout=False)


@dataclass(frozen=True)
class ScoreConfig:
    reward: str = doc("", "reward model directory (from `preftune reward`)", required=True)
    data: str = doc("", "rows {'prompt','completion'} to score", required=True)
    out: str = doc("", "write rows with a 'score' field here (default: print)")
    device: str = device_field()


# ---------------------------------------------------------------------- policy optimisation


@dataclass(frozen=True)
class DPOConfig:
    model: str = doc("", "pi_SFT: the policy to start from and the frozen reference", required=True)
    ref: str = doc(
        "", "another frozen reference than --model (a policy with the same tokenizer; iterated rounds start from the last round's policy)"
    )
    data: str = doc("", "comparisons: pairs, HH-RLHF transcripts or rankings (expanded into all pairs)", required=True)
    eval_data: str = doc("", "held-out comparisons (default: 5 percent of --data)")
    loss: str = doc("dpo", "preference loss (README: 'Preference losses')", choices=PREFERENCE_LOSSES)
    # The paper's 0.1, with the NLL term below: without it, 0.1 drifted far from pi_SFT on the lists
    # world (the demo's frontier) and 0.5 was the default; with it, 0.1 gains the most gold on every
    # seed of `preftune experiment configs/defaults.yaml` (README "When DPO collapses").
    beta: float = doc(0.1, "inverse temperature of the implicit reward (strength of the KL leash)")
    label_smoothing: float = doc(0.1, "cdpo's ε: the assumed probability that a label is flipped")
    simpo_gamma: float = doc(1.0, "simpo's target margin γ: -log sigmoid(β·(mean log π(y_w) - mean log π(y_l)) - γ)")
    length_normalise: bool = doc(False, "use per-token mean log-probs in Δ instead of sums (IPO's option; simpo always does)")
    lora: bool = doc(False, "train LoRA adapters; the reference is then the base with adapters off")
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    # 0.2, not 0: without it DPO on the lists world falls into likelihood displacement (both
    # completions' log-probs fall, samples stop ending) at β 0.1 on most seeds and at 0.5 on some;
    # RPO's 1 holds it off too but costs gold. Chosen on the dpo loss; the others share it.
    nll_coef: float = doc(
        0.2, "add this x the token-mean NLL of the chosen completion to each pair's loss (RPO, arXiv 2404.19733; 0 = plain DPO)"
    )
    monitor_prompts: int = doc(
        16, "every evaluation, sample this many held-out prompts: KL to pi_SFT, length, EOS rate (eval/sample/*; 0 = off)"
    )
    device: str = device_field()
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)
    train: TrainConfig = TrainConfig(out="runs/dpo", epochs=3.0, lr=3e-4, batch_size=16, eval_every=50, dropout=False)
    gen: SamplingConfig = SamplingConfig(max_new_tokens=32, temperature=1.0)
    alarm: AlarmConfig = AlarmConfig()


@dataclass(frozen=True)
class RLConfig:
    model: str = doc("", "pi_SFT: the policy to start from and the frozen KL reference", required=True)
    ref: str = doc(
        "",
        "another frozen KL reference than --model (a policy with the same tokenizer; iterated rounds start from the last round's policy)",
    )
    reward: str = doc("", "reward model directory (from `preftune reward`), or 'gold' for the world's gold reward", required=True)
    prompts: str = doc("", "training prompts, {'prompt'} rows", required=True)
    algo: str = doc("rloo", "algorithm (README: 'RLHF')", choices=RL_ALGORITHMS)
    iterations: int = doc(
        40, "rollout batches to collect and train on (the run's length: --train.epochs and --train.max-steps are ignored)"
    )
    prompts_per_iter: int = doc(32, "prompts per rollout batch")
    k: int = doc(4, "completions per prompt (the group of RLOO and GRPO, RAFT's m)")
    keep: int = doc(1, "raft: completions kept per prompt (the top by reward)")
    beta: float = doc(0.1, "KL coefficient β: in the reward, or grpo's KL loss term (0 = no leash)")
    kl_estimator: str = doc("k1", "per-token KL estimate in the reward: k1 = log π/π_ref, k3 = (r-1) - log r", choices=("k1", "k3"))
    target_kl: float = doc(0.0, "adaptive KL controller: the sequence KL to steer to (0 = fixed β)")
    track_kl: bool = doc(
        True,
        "measure the KL to pi_SFT every iteration (a reference forward per rollout); --no-track-kl, only with --beta 0: no reference at all",
    )
    kl_horizon: int = doc(10000, "adaptive KL controller horizon, in sequences")
    eos_penalty: float = doc(1.0, "subtracted from the score of a completion that never emits EOS")
    whiten_rewards: bool = doc(False, "whiten the scores over each rollout batch (before the KL penalty)")
    baseline_decay: float = doc(0.9, "reinforce: moving-average baseline b <- decay·b + (1-decay)·mean R")
    update_epochs: int = doc(0, "passes over each rollout batch (0 = the algorithm's default: 2 for ppo, 1 otherwise)")
    clip: float = doc(0.2, "ppo, grpo: policy ratio clip ε")
    scale_std: bool = doc(True, "grpo: divide each group's advantages by its std (--no-scale-std: Dr. GRPO)")
    value_clip: float = doc(0.2, "ppo: value clip around the rollout's values")
    value_coef: float = doc(0.1, "ppo: weight of the value loss")
    gamma: float = doc(1.0, "ppo: discount")
    lam: float = doc(0.95, "ppo: GAE λ")
    frozen_precision: str = doc(
        "fp32",
        "the frozen reference and reward model: fp32, or bf16 (half their memory; their log-probs and scores in bf16)",
        choices=("fp32", "bf16"),
    )
    ptx_data: str = doc("", "ppo-ptx: pretraining texts, {'text'} rows, mixed into the loss")
    ptx_coef: float = doc(0.0, "ppo-ptx: weight of the pretraining NLL")
    lora: bool = doc(
        False, "train LoRA adapters (and ppo's value model's, its head whole); the reference is then the start with adapters off"
    )
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    monitor_rewards: tuple[str, ...] = doc(
        (), "other reward models, not trained against: each rollout is scored by them too (rollout/disagreement, --alarm.disagreement)"
    )
    # lr 1e-4: at 3e-4 REINFORCE's KL ran away (gold fell below pi_SFT's) in an earlier demo; at 1e-4
    # every algorithm lifted gold on the demo's reward model (README, "RLHF").
    device: str = device_field()
    train: TrainConfig = TrainConfig(
        out="runs/rl", lr=1e-4, batch_size=64, warmup=0.0, schedule="constant", save_every=20, log_every=1, dropout=False
    )
    gen: SamplingConfig = SamplingConfig(max_new_tokens=32, temperature=1.0)
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)
    alarm: AlarmConfig = AlarmConfig()


@dataclass(frozen=True)
class IterateConfig:
    model: str = doc(
        "", "pi_SFT: round 1's policy, every round's reward-model initialisation, the KL reference with --reference sft", required=True
    )
    prompts: str = doc(
        "", "training prompts, {'prompt'} rows: each round samples its candidate pairs on some of them; RL trains on all", required=True
    )
    eval_prompts: str = doc(
        "", "held-out lists-world prompts: each round's policy scored on gold and KL to pi_SFT, its reward model on gold pairs"
    )
    out: str = doc("runs/iterate", "directory: round-N/ per round (prompts, candidates, pairs, labels, rm/, policy/) and rounds.jsonl")
    rounds: int = doc(3, "rounds of sample -> label -> reward model -> policy, each from the last round's policy")
    per_round: int = doc(400, "pairs labelled per round")
    labels: str = doc(
        "simulated", "who labels: the lists world's simulated annotators, or people in the web app", choices=("simulated", "web")
    )
    # ensemble, pooled, sft: the arms of `preftune experiment configs/iterate.yaml` with the most gold (README,
    # "Iterating at a fixed budget of labels"): ensemble above one round on all three seeds, with the labels that
    # stayed most informative; pooled reward models ordered pairs better; the previous policy as reference drifted.
    selection: str = doc(
        "ensemble",
        "which pairs are labelled: random pairs of pi_SFT's samples; of the current policy's (on-policy); of its samples, those the"
        " last round's reward model is least sure of (uncertainty) or its ensemble disagrees on most (ensemble)",
        choices=SELECTIONS,
    )
    pooling: str = doc(
        "pooled",
        "each round's reward model (and DPO) trains on every round's labels (pooled) or on its own round's",
        choices=("pooled", "per-round"),
    )
    reference: str = doc(
        "sft", "each round's KL reference (DPO's π_ref): pi_SFT throughout, or the previous round's policy", choices=("sft", "previous")
    )
    method: str = doc("rl", "each round's policy update: RL against the round's reward model, or DPO on the labels", choices=("rl", "dpo"))
    candidates: int = doc(2, "prompts sampled per pair labelled: the pool selection chooses from (one pair per prompt)")
    k: int = doc(4, "completions sampled per candidate prompt (every pair of them is a candidate)")
    ensemble: int = doc(3, "selection ensemble: reward models on the same labels at as many seeds")
    settings: str = doc(
        "", "YAML file of stage settings ({sample, reward, rl, dpo}, as an experiment's pipeline section), laid over the demo's"
    )
    tau: float = doc(0.1, "the simulated annotators' temperature")
    seed: int = doc(0, "seed for choosing prompts and pairs, labelling and training")
    host: str = doc("127.0.0.1", "web labels: interface to serve on; anything but localhost needs --annotators")
    port: int = doc(8000, "web labels: port")
    annotators: str = doc("", "web labels: JSONL of {'name','token'}: only these may label")
    wait: float = doc(0.0, "web labels: seconds to wait for a round's labels; then it trains on those it has (0 = until all)")


@dataclass(frozen=True)
class BestOfNConfig:
    model: str = doc("", "policy to sample from (pi_SFT)", required=True)
    reward: str = doc("", "reward model directory, or 'gold'", required=True)
    prompts: str = doc("", "prompts, {'prompt'} rows", required=True)
    n: int = doc(16, "samples per prompt; the best by reward is returned")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    out: str = doc("", "write the chosen {'prompt','completion','ended','score'} rows here")
    json: bool = doc(False, "print one JSON object instead of the summary")
    device: str = device_field()
    gen: SamplingConfig = SamplingConfig()


# ---------------------------------------------------------------------- experiments and report


@dataclass(frozen=True)
class MemoryConfig:
    model: str = doc("", "a model directory or a config.json file (only the config is read; nothing is loaded)", required=True)
    batch_size: int = doc(8, "per process: sequences (sft), pairs (dpo, reward) or rollout rows per micro-batch (rl)")
    seq_len: int = doc(1024, "tokens per sequence, prompt and completion")
    precision: str = doc("fp32", "fp32, or bf16 autocast (as --train.precision)", choices=("fp32", "bf16"))
    processes: int = doc(1, "processes under torchrun (FSDP divides weights, gradients and AdamW states by it)")
    fsdp: bool = doc(False, "FSDP2 instead of DDP (--train.fsdp)")
    gradient_checkpointing: bool = doc(False, "activation checkpointing (--train.gradient-checkpointing)")
    frozen_bf16: bool = doc(False, "rl: the reference and reward model held in bf16 (--frozen-precision bf16)")
    flash_attention: bool = doc(False, "no attention probabilities kept (flash / memory-efficient attention on GPUs)")
    json: bool = doc(False, "print one JSON object (bytes) instead of the table (GiB)")


WORKERS_HELP = (
    "policies train in this many processes at once, one thread each, output in OUT/NAME/train.log"
    " (0: one per core; 1: one after another in this process, on every core)"
)


@dataclass(frozen=True)
class DemoConfig:
    out: str = doc("runs/demo", "directory for data, models, results.json and report.html")
    quick: bool = doc(False, "a much smaller run (a couple of minutes) for smoke tests")
    seed: int = doc(0, "seed for the world, training and sampling")
    workers: int = doc(0, WORKERS_HELP)


@dataclass(frozen=True)
class ExperimentConfig:
    file: str = doc("", "experiment file (YAML), e.g. configs/frontier.yaml", positional=True, required=True)
    out: str = doc("", "output directory (default: the file's 'out')")
    quick: bool = doc(False, "run at the quick demo's scale")
    workers: int = doc(0, WORKERS_HELP)


@dataclass(frozen=True)
class ReportConfig:
    run: str = doc(
        "runs/demo",
        "a run directory holding results.json (from `preftune demo` or `preftune experiment`), or a results file",
        positional=True,
    )
    markdown: bool = doc(False, "print the methods table and findings as Markdown (the README's results) instead of writing report.html")
    samples: int = doc(0, "with --markdown: also each policy's completions for the first N held-out prompts (at most 6 are kept)")


@dataclass(frozen=True)
class PlotConfig:
    run: str = doc(
        "", "a training run's directory: its metrics.jsonl (x = step) and iterations.jsonl (x = iteration)", positional=True, required=True
    )
    out: str = doc("", "PNG file to write (default: RUN/curves.png)")
    metrics: str = doc("", "comma-separated metrics to draw, e.g. loss/train,iteration/gold (default: every numeric one)")


# ------------------------------------------------------------------------------ human labels


@dataclass(frozen=True)
class LabelServeConfig:
    tasks: str = doc("", "task file: {'prompt','a','b'} rows, or `preftune sample` output (first two completions)")
    db: str = doc("labels.sqlite", "SQLite database for tasks and labels (created if missing; reused if present)")
    host: str = doc("127.0.0.1", "interface to bind; anything but localhost needs --annotators with tokens")
    port: int = doc(8000, "port")
    annotators: str = doc("", "JSONL of {'name','token'}: only these may label, each with their token")


@dataclass(frozen=True)
class LabelExportConfig:
    db: str = doc("labels.sqlite", "the labelling database")
    out: str = doc("prefs.jsonl", "comparison rows for `preftune reward` / `preftune dpo`")


@dataclass(frozen=True)
class LabelStatsConfig:
    db: str = doc("labels.sqlite", "the labelling database")
    json: bool = doc(False, "print one JSON object")
