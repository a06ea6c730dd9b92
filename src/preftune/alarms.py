"""Alarms: rules over a run's monitors that say, in one line, when a run is going wrong.

A training loss says little about what a policy has become: DPO's falls while the policy drifts
far from pi_SFT and stops ending its answers, RL's proxy rises while gold falls. Each rule here
reads monitors the trainers already log (``metrics.jsonl``; RL's rollout statistics as
``rollout/*``) and fires once, the first time its condition holds. The loop prints the line,
writes ``alarm/NAME`` = 1 into that step's metrics, and with ``--train.stop-on-alarm`` ends the run
there (:func:`preftune.loop.train`). The thresholds are ``--alarm.*`` (:class:`AlarmConfig`); how
often they catch a run whose gold fell, and how often they cry wolf, is measured on the gold world
(README: "Alarms").

A rule is a function ``(values, start) -> message or None``: ``values`` holds this step's
monitors, ``start`` each monitor's first value in the run (its value at pi_SFT, where the method
measures one before training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .config import AlarmConfig

Rule = Callable[[Mapping[str, float], Mapping[str, float]], "str | None"]


def above(key: str, limit: float, what: str) -> Rule:
    """Fires when ``key`` exceeds ``limit``."""

    def rule(values, start):
        v = values.get(key)
        return f"{what} is {v:.3g}, above {limit:g}" if v is not None and v > limit else None

    return rule


def fell(key: str, by: float, what: str) -> Rule:
    """Fires when ``key`` has fallen more than ``by`` below its start."""

    def rule(values, start):
        v, s = values.get(key), start.get(key)
        return f"{what} fell from {s:.3g} to {v:.3g}" if v is not None and s is not None and v < s - by else None

    return rule


def left_band(key: str, frac: float, what: str) -> Rule:
    """Fires when ``key`` leaves ``start × (1 ± frac)``."""

    def rule(values, start):
        v, s = values.get(key), start.get(key)
        if v is None or s is None or s <= 0 or abs(v - s) <= frac * s:
            return None
        return f"{what} went from {s:.3g} to {v:.3g}, outside ±{frac:.0%}"

    return rule


def displaced(chosen: str, margin: str, by: float) -> Rule:
    """Likelihood displacement (Razin et al., arXiv 2410.08847): the chosen completions' log-ratio to
    the reference, ``log π(y_w) - log π_ref(y_w)`` (0 at the start), has fallen below ``-by`` nats
    while the preference margin grew: the loss is won by pushing both completions down, and the
    mass goes to sequences neither of them is."""

    def rule(values, start):
        c, m = values.get(chosen), values.get(margin)
        if c is None or m is None or not (c < -by and m > start.get(margin, 0.0)):
            return None
        return f"likelihood displacement: log pi(chosen) fell {-c:.3g} nats below pi_ref's while the margin grew to {m:.3g}"

    return rule


def rose_with(key: str, proxy: str, frac: float, what: str) -> Rule:
    """Fires when ``key`` has risen more than ``frac`` above its start while ``proxy`` rose too: the
    reward models disagree more exactly where the policy gains reward (over-optimisation)."""

    def rule(values, start):
        v, s, p, p0 = values.get(key), start.get(key), values.get(proxy), start.get(proxy)
        if None in (v, s, p, p0) or s <= 0 or not (v > (1 + frac) * s and p > p0):
            return None
        return f"{what} rose from {s:.3g} to {v:.3g} while the proxy rose from {p0:.3g} to {p:.3g}"

    return rule


def dpo_rules(cfg: AlarmConfig) -> dict[str, Rule]:
    """The DPO family's rules, over its held-out pair metrics and its sample monitor
    (:class:`preftune.methods.dpo.SampleMonitor`)."""
    rules: dict[str, Rule] = {}
    if cfg.displacement > 0:
        rules["displacement"] = displaced("eval/logratio/chosen", "eval/margin", cfg.displacement)
    return rules | _sample_rules(cfg, "eval/sample/")


def rl_rules(cfg: AlarmConfig) -> dict[str, Rule]:
    """RL's rules, over each rollout's statistics (``rollout/*``)."""
    rules = _sample_rules(cfg, "rollout/")
    if cfg.disagreement > 0:
        rules["disagreement"] = rose_with("rollout/disagreement", "rollout/score", cfg.disagreement, "the reward models' disagreement")
    return rules


def _sample_rules(cfg: AlarmConfig, prefix: str) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    if cfg.kl > 0:
        rules["kl"] = above(f"{prefix}kl", cfg.kl, "KL to the reference (nats per completion)")
    if cfg.eos_drop > 0:
        rules["eos"] = fell(f"{prefix}eos_rate", cfg.eos_drop, "the EOS rate")
    if cfg.length > 0:
        rules["length"] = left_band(f"{prefix}length", cfg.length, "the mean completion length")
    return rules


@dataclass
class Alarms:
    """Named rules and what they need to remember: each monitor's first value, and which have fired."""

    rules: dict[str, Rule]

    def __post_init__(self):
        self.start: dict[str, float] = {}
        self.fired: dict[str, int] = {}  # name -> the step it fired at

    def observe_start(self, values: Mapping[str, float]) -> None:
        """Record values measured before training (at pi_SFT) as the starts."""
        for k, v in values.items():
            self.start.setdefault(k, v)

    def check(self, step: int, values: Mapping[str, float]) -> dict[str, str]:
        """The rules that fire for the first time at ``step``: name -> message."""
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.start.setdefault(k, float(v))
        new = {}
        for name, rule in self.rules.items():
            if name in self.fired:
                continue
            message = rule(values, self.start)
            if message is not None:
                self.fired[name] = step
                new[name] = message
        return new

    def state(self) -> dict:
        return {"start": dict(self.start), "fired": dict(self.fired)}

    def load_state(self, state: Mapping) -> None:
        self.start, self.fired = dict(state.get("start", {})), dict(state.get("fired", {}))


def raised(rows: list[dict]) -> list[tuple[int, str]]:
    """(step, rule) of the alarms a run raised, from its metrics.jsonl rows (``alarm/RULE`` keys)."""
    return [(row["step"], k.removeprefix("alarm/")) for row in rows for k in row if k.startswith("alarm/")]


def replay(rows: list[dict], rules: dict[str, Rule]) -> list[tuple[int, str]]:
    """(step, rule) of the alarms ``rules`` raise over a run's logged monitors, as the loop raises
    them: ``rows`` in step order, each ``{"step": N, NAME: value, ...}``; a step-0 row holds the
    values measured before training (the starts). Thresholds can so be judged on runs made with
    others (``preftune experiment``'s ``alarms``)."""
    alarms, fired = Alarms(rules), []
    for row in rows:
        values = {k: v for k, v in row.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
        if row["step"] == 0:
            alarms.observe_start(values)
        else:
            fired += [(row["step"], name) for name in alarms.check(row["step"], values)]
    return fired
