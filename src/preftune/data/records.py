"""The records preftune trains on: a demonstration, a comparison of two completions, a ranking of K."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    completion: str


# Strength of a comparison, from the 8-point scale's distance to its middle:
# much better, better, slightly better, negligibly better.
SCALE_STRENGTHS = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class Comparison:
    """One preference: ``chosen`` is better than ``rejected`` for ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    strength: float | None = None  # from the 8-point scale, 0.5 (barely) .. 1.0 (much better)
    annotator: str | None = None
    group: str | None = None
    ended: tuple[bool, bool] = (True, True)  # False: that completion never emitted EOS (it is encoded without one)


@dataclass(frozen=True)
class Ranking:
    """K completions of one prompt ordered best first: ``completions[ranking[0]]`` is the best."""

    prompt: str
    completions: tuple[str, ...]
    ranking: tuple[int, ...]
    annotator: str | None = None
    group: str | None = None
    ended: tuple[bool, ...] | None = None  # per completion; None: all ended (each encoded with its EOS)

    def ended_flags(self) -> tuple[bool, ...]:
        return self.ended if self.ended is not None else (True,) * len(self.completions)
