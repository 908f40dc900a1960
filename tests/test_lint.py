"""The linter (ruff, configured in ruff.toml) finds nothing in the repository, and the formatter
(pyink, configured in pyproject.toml) would change nothing."""

import subprocess
import sys

from multidevice import REPO_ROOT


def test_ruff_finds_nothing():
  proc = subprocess.run(
      [sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pyink_would_change_nothing():
  proc = subprocess.run(
      [sys.executable, '-m', 'pyink', '--check', '.'],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, f'{proc.stdout}{proc.stderr}Run `pyink .` to format.'
