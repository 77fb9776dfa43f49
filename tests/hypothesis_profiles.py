"""Hypothesis settings for every property-based test, loaded by conftest.

The protocol fuzzer runs ``FUZZ_EXAMPLES`` examples: 10 000 by default, the same
locally and in CI, so a run everywhere explores as much as the one that gates a
change. ``QQCHAT_FUZZ_EXAMPLES=200 scripts/test ...`` lowers it for a quick look.
No example database, and Hypothesis's own caches in the temporary directory:
nothing is written into the source tree, and a failure is reproduced from the
``@reproduce_failure`` blob Hypothesis prints instead.
Deadlines are off because every example waits on a real daemon over TCP, whose
timing depends on whatever else runs on the machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

DEFAULT_EXAMPLES = 10_000
ENV_EXAMPLES = "QQCHAT_FUZZ_EXAMPLES"


def _examples() -> int:
    raw = os.environ.get(ENV_EXAMPLES, "").strip()
    if not raw:
        return DEFAULT_EXAMPLES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_EXAMPLES} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{ENV_EXAMPLES} must be at least 1, not {value}")
    return value


FUZZ_EXAMPLES = _examples()


def examples(wanted: int) -> int:
    """A smaller fuzzer's own count, lowered along with the main one."""
    return max(1, min(wanted, FUZZ_EXAMPLES))


if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"qqchat-hypothesis-{os.getuid()}")

settings.register_profile(
    "qqchat",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    # examples share one daemon (a function-scoped fixture on purpose) and each one
    # waits on the network, so these two checks would only flag the design
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("qqchat")
