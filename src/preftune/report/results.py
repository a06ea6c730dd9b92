"""What every part of the report reads: the methods' titles, values looked up in ``results.json``
(:func:`lookup`, the one way a number gets in), their formatting, and the 95% intervals verdicts are
read from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TITLES = {
    "base": "base (pretrained)",
    "demonstrator": "demonstrator (noisy human)",
    "sft": "SFT (pi_SFT)",
    "best-of-n": "best-of-n (reward model)",
    "raft": "RAFT (filter + SFT)",
    "reinforce": "REINFORCE",
    "rloo": "RLOO",
    "ppo": "PPO",
    "dpo": "DPO",
    "ipo": "IPO",
    "unlikelihood": "unlikelihood",
    "grpo": "GRPO",
    "simpo": "SimPO",
    "grpo-gold": "GRPO on gold (from base)",
}


HEADLINE = tuple(TITLES)  # the methods table's rows, in order, where the results have them


def ordered(names) -> list[str]:
    """``names`` as the methods table orders them: :data:`HEADLINE`'s first, then any other (a variant
    an experiment file named, such as ``dpo-nll``) in the order given."""
    names = list(names)
    return [m for m in HEADLINE if m in names] + [m for m in names if m not in TITLES]


def title(res: dict, method: str) -> str:
    """A method's title in the report; the base row names the pretrained model an experiment started from."""
    start = res.get("config", {}).get("start")
    if method == "base" and start:
        return f"base: {start} (pretrained)"
    return TITLES.get(method, method)


class MissingResult(ValueError):
    """A results file without a value the report reads: one written by another preftune version."""


def lookup(res: dict, key: str) -> Any:
    """The value at a dotted path of results.json (list items by index)."""
    value: Any = res
    for part in key.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            raise MissingResult(f"no {key!r} in the results (written by another preftune version? run the experiment again)") from None
    return value


def fmt(value: Any, digits: int) -> str:
    """A number as the report prints it: ``digits`` decimals, with a sign when ``digits < 0``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:+.{-digits}f}" if digits < 0 else f"{value:.{digits}f}"


def verdict_interval(claim: dict) -> dict:
    """The interval a verdict is read from: over seeds when the run has them, else over prompts."""
    return claim.get("seeds", claim)


def above(claim: dict) -> bool:
    ci = verdict_interval(claim)
    return ci["lo"] is not None and ci["lo"] > 0


def below(claim: dict) -> bool:
    ci = verdict_interval(claim)
    return ci["hi"] is not None and ci["hi"] < 0


def compare(claim: dict, better: str, worse: str, same: str) -> str:
    """``better`` if the claim's interval lies above zero, ``worse`` if below, else ``same``."""
    return better if above(claim) else worse if below(claim) else same


def grouped(claims: dict[str, dict], target: str) -> str:
    """``"A, B beat T; C is indistinguishable from T; D falls below T"``: each name by its claim
    against ``target`` (names in the order given)."""
    groups = {
        ("beats", "beat"): [m for m, c in claims.items() if above(c)],
        ("is indistinguishable from", "are indistinguishable from"): [m for m, c in claims.items() if not above(c) and not below(c)],
        ("falls below", "fall below"): [m for m, c in claims.items() if below(c)],
    }
    return "; ".join(f"{', '.join(ms)} {verb[len(ms) > 1]} {target}" for verb, ms in groups.items() if ms)


def comparisons(res: dict) -> int:
    """How many intervals the report's verdicts are read from (each at 95%)."""
    n = 0
    for claim in res.get("claims", {}).values():
        n += isinstance(claim, dict) and "lo" in claim and "hi" in claim
    n += 2 * len(res.get("overoptimisation", {}).get("runs", []))  # each run's proxy and gold change
    return n


def results_path(run: str | Path) -> Path:
    """A run directory's results.json, or a results file itself."""
    run = Path(run)
    path = run if run.suffix == ".json" else run / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here (run `preftune demo` or `preftune experiment` first)")
    return path
