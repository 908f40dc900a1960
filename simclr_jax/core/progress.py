"""What a training run tells its user while it runs: where to look, how fast, how long."""

import datetime
import time

from absl import logging
import jax

# Past this estimated duration on a CPU, the run is most likely a GPU/TPU config by mistake.
_ABSURD_CPU_SECONDS = 2 * 24 * 3600


def format_duration(seconds: float) -> str:
  """3725 -> '1h02m', 75 -> '1m15s', 4 days -> '4.0 days'."""
  seconds = max(0, int(round(seconds)))
  if seconds >= 2 * 24 * 3600:
    return f'{seconds / 86400:.1f} days'
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class Progress:
  """Logs a line when the first step completes, then one at least every `every_secs`.

  Rates and the ETA come from completed steps (the loop reports each one), not dispatched ones,
  and include everything the run does between steps (evaluations, checkpoints).
  """

  def __init__(
      self,
      *,
      start_step: int,
      total_steps: int,
      batch_size: int,
      every_secs: float,
      cpu_config_hint: str = '',
  ):
    self._start_step, self._total_steps = start_step, total_steps
    self._batch_size, self._every_secs = batch_size, every_secs
    self._cpu_config_hint = cpu_config_hint
    self._started = time.perf_counter()
    self._first_done = None  # (step, time) when the first step completed.
    self._last_line = None
    self._warned = False
    self.last_step = start_step

  def starting(self, workdir: str):
    logging.info(
        'Training steps %d -> %d. Metrics go to %s/metrics.jsonl and TensorBoard '
        '(tensorboard --logdir %s). Compiling the train step first (a minute or more '
        'for big models).',
        self._start_step + 1,
        self._total_steps,
        workdir,
        workdir,
    )

  def step_done(self, step: int):
    now = time.perf_counter()
    self.last_step = step
    if self._first_done is None:
      self._first_done = self._last_line = (step, now)
      logging.info(
          'Step %d done %.1f s after start (compilation included).', step, now - self._started
      )
      return
    if now - self._last_line[1] < self._every_secs and step < self._total_steps:
      return
    self._last_line = (step, now)
    seconds_per_step = (now - self._first_done[1]) / (step - self._first_done[0])
    remaining = (self._total_steps - step) * seconds_per_step
    eta = datetime.datetime.now() + datetime.timedelta(seconds=remaining)
    logging.info(
        'Step %d/%d (%.1f%%): %.3g s/step, %.0f images/s; %s to go (ETA %s).',
        step,
        self._total_steps,
        100 * step / self._total_steps,
        seconds_per_step,
        self._batch_size / seconds_per_step,
        format_duration(remaining),
        eta.strftime('%a %H:%M'),
    )
    self._warn_if_absurd(seconds_per_step)

  def _warn_if_absurd(self, seconds_per_step: float):
    total = (self._total_steps - self._start_step) * seconds_per_step
    if self._warned or jax.default_backend() != 'cpu' or total < _ABSURD_CPU_SECONDS:
      return
    self._warned = True
    logging.warning(
        'At %.3g s a step on this CPU, the %d steps of this config take about %s. '
        'It is sized for GPUs or TPUs.%s',
        seconds_per_step,
        self._total_steps - self._start_step,
        format_duration(total),
        self._cpu_config_hint,
    )

  def elapsed(self) -> float:
    return time.perf_counter() - self._started
