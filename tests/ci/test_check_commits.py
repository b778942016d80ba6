""".ci/check_commits.py, the CI check of the commit-subject rule (CONTRIBUTING.md), on scratch repositories."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "check_commits.py"
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
LONG = "Add a subject that says far too much, with numbers: 113 passed, 1 skipped in 42 s"
FITS = "Subject of exactly 72 characters, ≤ counted as one character, not bytes."


def git(repo: Path, *args: str) -> str:
    run = subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, capture_output=True, text=True, check=True)
    return run.stdout.strip()


def commit(repo: Path, subject: str) -> str:
    git(repo, "commit", "-q", "--allow-empty", "-m", subject, "-m", "Body: numbers go here.")
    return git(repo, "rev-parse", "HEAD")


def check(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=repo, env=GIT_ENV, capture_output=True, text=True)


def scratch_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """base, then one long subject, then one that fits: returns the repo, the base and the long commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    base = commit(repo, "Base, whose subject is not checked even though it is longer than 72 characters")
    long_sha = commit(repo, LONG)
    commit(repo, FITS)
    return repo, base, long_sha


def test_lists_the_subjects_over_72_characters_after_the_base(tmp_path):
    assert len(LONG) > 72 and len(FITS) == 72 < len(FITS.encode())
    repo, base, long_sha = scratch_repo(tmp_path)
    run = check(repo, "--base", base)
    assert run.returncode == 1, run.stderr
    assert f"{long_sha[:7]} ({len(LONG)}): {LONG}" in run.stderr
    assert "1 commit subject(s)" in run.stderr and FITS not in run.stderr and "Base," not in run.stderr


def test_passes_when_every_subject_after_the_base_fits(tmp_path):
    repo, _, long_sha = scratch_repo(tmp_path)
    run = check(repo, "--base", long_sha)
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_a_missing_base_fails_loudly_and_says_how_to_fix_it(tmp_path):
    repo, _, _ = scratch_repo(tmp_path)
    run = check(repo, "--base", "0123456789abcdef0123456789abcdef01234567")
    assert run.returncode == 2
    assert "is not in this clone" in run.stderr and "git fetch --unshallow" in run.stderr


def test_outside_a_repository_it_fails_loudly(tmp_path):
    env = {**GIT_ENV, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}  # no repository above tmp_path either
    run = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "not inside a git repository" in run.stderr
