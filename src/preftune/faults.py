"""Fault injection: the test suite's way to SIGKILL a run at a chosen point (``tests/test_faults.py``).

``PREFTUNE_KILL_AT="point:n"`` makes this process SIGKILL itself the ``n``-th time it passes
``point``; ``"point@v"`` when it passes ``point`` at ``v`` (the optimiser step of ``step`` and
``checkpoint``, the iteration of ``rollout``), which a resumed run reaches again. With
``PREFTUNE_KILL_GROUP=1`` the whole process group goes (the demo and its workers).
Points: ``step`` (after an optimiser step and any checkpoint), ``checkpoint`` (inside a checkpoint's
write, before its rename), ``write`` (inside an atomic file write, before its rename), ``save`` (inside
a model's save), ``generate`` (after a batch of sampling), ``rollout`` (after an RL iteration's
rollout is saved), ``stage`` (between the demo pipeline's stages). Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_passed: dict[str, int] = {}


def point(name: str, at: int | None = None) -> None:
    spec = os.environ.get("PREFTUNE_KILL_AT")
    if not spec:
        return
    if "@" in spec:
        where, _, value = spec.partition("@")
        fire = where == name and at is not None and at == int(value)
    else:
        where, _, n = spec.partition(":")
        if where != name:
            return
        _passed[name] = _passed.get(name, 0) + 1
        fire = _passed[name] == int(n or 1)
    if fire:
        if os.environ.get("PREFTUNE_KILL_GROUP"):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
