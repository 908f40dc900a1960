"""Progress lines: after the first step, then every few seconds, rates from completed steps."""

import logging

import pytest

from simclr_jax.core import progress


class _Clock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  return clock


def _lines(caplog):
  lines = [r.getMessage() for r in caplog.records if r.name == 'absl']
  caplog.clear()
  return lines


def test_lines_come_from_completed_steps_and_the_clock(clock, caplog):
  caplog.set_level(logging.INFO)
  report = progress.Progress(start_step=100, total_steps=1100, batch_size=256, every_secs=30)
  clock.now += 45.0  # Compilation and the first step.
  report.step_done(101)
  assert _lines(caplog) == ['Step 101 done 45.0 s after start (compilation included).']
  for step in range(102, 116):  # 2 s a step: a line once 30 s have passed, at step 116.
    clock.now += 2.0
    report.step_done(step)
  assert not _lines(caplog)
  clock.now += 2.0
  report.step_done(116)
  (line,) = _lines(caplog)
  # 984 steps to go at 2 s: 32 min 48 s.
  assert line.startswith('Step 116/1100 (10.5%): 2 s/step, 128 images/s; 32m48s to go (ETA ')
  clock.now += 2.0 * (1100 - 117)
  report.step_done(1099)
  report.step_done(1100)  # The last step always gets a line.
  assert len(_lines(caplog)) == 2


def test_a_cpu_run_that_would_take_days_says_so_once(clock, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(progress.jax, 'default_backend', lambda: 'cpu')
  report = progress.Progress(
      start_step=0,
      total_steps=97_656,
      batch_size=512,
      every_secs=30,
      cpu_config_hint=' Try the CPU config.',
  )
  clock.now += 90.0
  report.step_done(1)
  for step in (2, 3, 4):
    clock.now += 36.0
    report.step_done(step)
  warnings = [
      r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == 'absl'
  ]
  assert warnings == [
      'At 36 s a step on this CPU, the 97656 steps of this config take about '
      '40.7 days. It is sized for GPUs or TPUs. Try the CPU config.'
  ]
  monkeypatch.setattr(progress.jax, 'default_backend', lambda: 'gpu')
  caplog.clear()
  report = progress.Progress(start_step=0, total_steps=97_656, batch_size=512, every_secs=30)
  report.step_done(1)
  clock.now += 36.0
  report.step_done(2)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == 'absl']


@pytest.mark.parametrize(
    'seconds, text', [(4, '4s'), (75, '1m15s'), (3725, '1h02m'), (2 * 86400 + 1, '2.0 days')]
)
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text
