"""Runs a script in a fresh interpreter that sees 8 CPU devices (XLA reads the flag once)."""

import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_eight_cpu_devices(script: str, *args: str) -> str:
  """Runs `script` with 8 host-platform devices; returns the last line it printed."""
  flags = ' '.join(
      filter(None, [os.environ.get('XLA_FLAGS'), '--xla_force_host_platform_device_count=8'])
  )
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-c', script, *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      cwd=REPO_ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc.stdout.strip().splitlines()[-1]
