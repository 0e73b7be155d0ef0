"""Hypothesis profiles for the hardening tests.

    ci (default)  derandomized (the same examples on every run), few examples, no deadline
    thorough      random examples, many of them: HYPOTHESIS_PROFILE=thorough pytest tests/hardening

Each test sets its own `max_examples` for the `ci` profile; `thorough` multiplies it (see `examples`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """`n` examples in CI, 20 times as many with the thorough profile."""
    return n * 20 if PROFILE == "thorough" else n
