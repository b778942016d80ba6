#!/usr/bin/env python3
"""Commit subjects after the base commit must be at most 72 characters (CONTRIBUTING.md, "Commits").

Numbers (tests passed, timings) belong in the body; a subject only says what changed. History before
the base is not rewritten, so only commits after it are checked. Standard library only: CI runs it
before `make lint`, before the virtual environment exists.

    python3 .ci/check_commits.py                 # commits in BASE..HEAD
    python3 .ci/check_commits.py --base REV      # another base (the tests use a scratch repository)

Exit status: 0 all subjects fit, 1 some are too long (each is listed), 2 the base or the repository is
missing (a shallow clone: fetch the full history, e.g. `git fetch --unshallow`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

# 7ab20a6 (2026-12-03): the commits after it are checked; the subjects before it stay as they are.
BASE = "7ab20a6525cd41dfc6fc508cb98bb5d0979d81aa"
MAX_SUBJECT = 72


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, encoding="utf-8")


def long_subjects(base: str, limit: int = MAX_SUBJECT) -> list[tuple[str, str]]:
    """(short hash, subject) of every commit in ``base..HEAD`` whose subject is over ``limit`` characters."""
    log = git("log", "--format=%h%x00%s", f"{base}..HEAD")
    if log.returncode != 0:
        raise RuntimeError(log.stderr.strip())
    rows = [line.split("\0", 1) for line in log.stdout.splitlines() if line]
    return [(sha, subject) for sha, subject in rows if len(subject) > limit]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=BASE, help="check the commits after this one (default: %(default)s)")
    args = p.parse_args(argv)

    if git("rev-parse", "--git-dir").returncode != 0:
        print("check_commits: not inside a git repository; run it from a clone of the project", file=sys.stderr)
        return 2
    if git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}").returncode != 0:
        print(
            f"check_commits: the base commit {args.base} is not in this clone, so the commit subjects after it "
            "cannot be checked. A shallow clone lacks it: fetch the full history (`git fetch --unshallow`, "
            "or `fetch-depth: 0` in CI).",
            file=sys.stderr,
        )
        return 2
    try:
        too_long = long_subjects(args.base)
    except RuntimeError as err:
        print(f"check_commits: git log failed: {err}", file=sys.stderr)
        return 2
    if not too_long:
        return 0
    print(
        f"check_commits: {len(too_long)} commit subject(s) after {args.base[:7]} are over {MAX_SUBJECT} characters; "
        "shorten the subject and put numbers and detail in the body (git commit --amend, or git rebase -i "
        "for commits not yet pushed):",
        file=sys.stderr,
    )
    for sha, subject in too_long:
        print(f"  {sha} ({len(subject)}): {subject}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
