"""The fuzz tests' hypothesis settings profiles, and a longer fuzz campaign for developers.

The fuzz tests (``tests/test_fuzz_*.py``) import :func:`load_profile` and run under one of
these profiles, chosen by the ``REPLICATION_FUZZ`` environment variable:

- ``ci`` (the default): derandomized (a fixed seed, the same examples on every run), no
  example database, 400 examples per codec test and fewer for the live master and worker
  (see :func:`scaled`), so that all the fuzz tests together stay well inside a minute of
  the suite's time.
- ``dev``: random seeds and five times the examples, with the example database kept in
  ``.hypothesis/`` so that a failure found once is replayed first next time.
- ``campaign``: what this script runs: random seeds, many examples per test and round.

Run the campaign from the project root; it runs the fuzz tests round after round, each
round with a new seed, until the minutes are spent or a round fails, and prints what it
ran::

    .venv/bin/python tests/fuzz_campaign.py --minutes 10

A failing round prints hypothesis's minimal example and the seed that reproduces it
(``--seed N --rounds 1``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

#: The environment variable that selects the profile.
PROFILE_VARIABLE = "REPLICATION_FUZZ"
#: Examples per test in the campaign profile (one round); ``REPLICATION_FUZZ_EXAMPLES``
#: overrides it.
CAMPAIGN_EXAMPLES = 2000

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=400, derandomize=True, database=None, deadline=None,
    suppress_health_check=_SLOW_OK, print_blob=True,
)
settings.register_profile(
    "dev", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True,
)
settings.register_profile(
    "campaign",
    max_examples=int(os.environ.get("REPLICATION_FUZZ_EXAMPLES", CAMPAIGN_EXAMPLES)),
    deadline=None, database=None, suppress_health_check=_SLOW_OK, print_blob=True,
)


def load_profile() -> str:
    """Load the profile that ``REPLICATION_FUZZ`` names (``ci`` when unset) and return its
    name; an unknown name is an error that lists the known ones."""
    name = os.environ.get(PROFILE_VARIABLE) or "ci"
    if name not in ("ci", "dev", "campaign"):
        raise ValueError(f"{PROFILE_VARIABLE}={name!r}: use ci, dev or campaign")
    settings.load_profile(name)
    return name


def scaled(examples: int) -> int:
    """``examples`` in the ``ci`` profile, scaled up as the loaded profile is: for tests
    whose examples cost more than the codec's (a live master or worker per example)."""
    return max(1, examples * settings().max_examples // 400)


_RAN = re.compile(r"- (\d+) passing, (\d+) failing, and \d+ invalid test cases")


def _examples_run(output: str) -> int:
    """The examples (passing and failing; not those hypothesis discarded as invalid) that
    hypothesis's statistics report (``--hypothesis-show-statistics``)."""
    return sum(int(a) + int(b) for a, b in _RAN.findall(output))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time to spend (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round")
    parser.add_argument("--examples", type=int, default=CAMPAIGN_EXAMPLES,
                        help=f"examples per test per round (default {CAMPAIGN_EXAMPLES})")
    parser.add_argument("-k", default=None, help="only the fuzz tests matching this expression")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, REPLICATION_FUZZ="campaign",
               REPLICATION_FUZZ_EXAMPLES=str(args.examples))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    tests = sorted(str(p) for p in (root / "tests").glob("test_fuzz_*.py"))
    seed = args.seed if args.seed is not None else int(time.time())
    deadline = time.monotonic() + args.minutes * 60
    rounds = examples = 0
    started = time.monotonic()
    while time.monotonic() < deadline and (args.rounds is None or rounds < args.rounds):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-o", "timeout=0", "--hypothesis-show-statistics",
                   f"--hypothesis-seed={seed}", *tests]
        if args.k:
            command += ["-k", args.k]
        result = subprocess.run(
            command, check=False, cwd=root, env=env, capture_output=True, text=True
        )
        rounds += 1
        found = _examples_run(result.stdout)
        examples += found
        print(f"round {rounds}: seed {seed}, {found} examples, "
              f"{'passed' if result.returncode == 0 else 'FAILED'}", flush=True)
        if result.returncode != 0:
            print(result.stdout[-20000:])
            print(result.stderr[-5000:], file=sys.stderr)
            print(f"reproduce: {sys.executable} tests/fuzz_campaign.py --seed {seed} --rounds 1 "
                  f"--examples {args.examples}")
            return 1
        seed += 1
    minutes = (time.monotonic() - started) / 60
    print(f"campaign: {rounds} rounds, {examples} examples in {minutes:.1f} minutes, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
