r"""Mutation check of the numerical core, run by hand (not part of CI): which bugs does the suite
catch?

  python tests/mutation/run.py --list
  python tests/mutation/run.py [--only NAME ...] [--baseline] [--dry_run] [--timeout 1800]

Each mutation replaces an exact snippet of one source file with a plausible bug, in a temporary
copy of the repository (`git ls-files` plus untracked files that are not ignored); the working
tree is never modified. The mutation's related test files then run in that copy with
`python -m pytest -q -x -p no:randomly`, from the copy's root and with it first on PYTHONPATH,
so that the copy's simclr_jax is imported rather than the editable install (checked before
anything runs). Results:

- caught: the tests failed;
- survived: the tests passed, a gap in the suite;
- stale: the snippet is not in the file (or is there several times): update this list;
- error: pytest could not run (exit status other than 0 and 1), e.g. the mutation broke imports;
- timeout.

--baseline first runs each selected test set on the unmutated copy: a mutation only counts as
caught if its tests pass without it. The CIFAR-10 folder of the checkout ($SIMCLR_CIFAR10_DIR,
default ../shared/data/cifar10-jpeg next to it) is passed on, as the copy has no sibling folder.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class Mutation(NamedTuple):
  name: str
  file: str  # Relative to the repository root.
  old: str  # Exact text, present once in `file`.
  new: str
  tests: tuple[str, ...]  # Test files expected to catch it.


MUTATIONS = (
    # NT-Xent (losses.py).
    Mutation(
        'loss-mean-over-2n',
        'simclr_jax/losses.py',
        'loss=loss / n,',
        'loss=loss / (2 * n),',
        ('tests/test_losses.py', 'tests/test_train_step.py'),
    ),
    Mutation(
        'loss-no-same-view-negatives',
        'simclr_jax/losses.py',
        'jnp.concatenate([logits_other, logits_same], axis=1)',
        'logits_other',
        ('tests/test_losses.py', 'tests/test_train_step.py'),
    ),
    Mutation(
        'loss-positives-without-temperature',
        'simclr_jax/losses.py',
        'logits_other = anchors @ other_view_all.T / temperature',
        'logits_other = anchors @ other_view_all.T',
        ('tests/test_losses.py', 'tests/test_train_step.py'),
    ),
    Mutation(
        'loss-self-similarity-kept',
        'simclr_jax/losses.py',
        'same_view_all.T / temperature - self_mask',
        'same_view_all.T / temperature',
        ('tests/test_losses.py', 'tests/test_train_step.py'),
    ),
    Mutation(
        'all-gather-offset-per-row',
        'simclr_jax/losses.py',
        'offset = jax.lax.axis_index(axis_name) * z_a.shape[0]',
        'offset = jax.lax.axis_index(axis_name)',
        ('tests/test_losses.py',),
    ),
    # The train step (train.py).
    Mutation(
        'train-step-pairs-views-across-images',
        'simclr_jax/methods/simclr.py',
        "z = out['z'].reshape(n, 2, -1)",
        "z = out['z'].reshape(2, n, -1).transpose(1, 0, 2)",
        ('tests/test_train_step.py',),
    ),
    Mutation(
        'train-step-keeps-old-batch-stats',
        'simclr_jax/methods/simclr.py',
        'params=params, batch_stats=batch_stats,',
        'params=params, batch_stats=state.batch_stats,',
        ('tests/test_train_step.py',),
    ),
    Mutation(
        'train-step-drops-probe-weight-decay',
        'simclr_jax/methods/simclr.py',
        'loss = loss + probe_loss + probe_decay',
        'loss = loss + probe_loss',
        ('tests/test_train_step.py',),
    ),
    Mutation(
        'head-bn-momentum-flipped',
        'simclr_jax/models/__init__.py',
        'output_dim=model_config.head_output_dim,\n      bn_momentum=model_config.bn_momentum,',
        'output_dim=model_config.head_output_dim,\n      bn_momentum=1 - model_config.bn_momentum,',
        ('tests/test_models.py',),
    ),
    # Optimiser and schedule (optim.py).
    Mutation(
        'decay-mask-includes-probe',
        'simclr_jax/core/optim.py',
        ' and supervised_head not in names',
        '',
        ('tests/test_optim.py',),
    ),
    Mutation(
        'decay-mask-includes-batchnorm-and-biases',
        'simclr_jax/core/optim.py',
        "return names[-1] == 'kernel' and ",
        'return ',
        ('tests/test_optim.py',),
    ),
    Mutation(
        'warmup-one-step-ahead',
        'simclr_jax/core/optim.py',
        'warmup = peak * step /',
        'warmup = peak * (step + 1) /',
        ('tests/test_optim.py',),
    ),
    Mutation(
        'warmup-skipped',
        'simclr_jax/core/optim.py',
        'jnp.where(step < warmup_steps, warmup, cosine)',
        'cosine',
        ('tests/test_optim.py',),
    ),
    Mutation(
        'cosine-quarter-period',
        'simclr_jax/core/optim.py',
        'jnp.cos(jnp.pi * progress)',
        'jnp.cos(0.5 * jnp.pi * progress)',
        ('tests/test_optim.py',),
    ),
    # Evaluation data flow (evaluators/, linear_classifier.py, knn.py, report.py).
    Mutation(
        'eval-probe-fitted-on-eval-split',
        'simclr_jax/evaluators/linear.py',
        'linear_probe_scores(config, train, evaluation[0], num_classes)',
        'linear_probe_scores(config, evaluation, evaluation[0], num_classes)',
        ('tests/test_evaluate.py',),
    ),
    Mutation(
        'eval-knn-bank-is-eval-split',
        'simclr_jax/evaluators/knn.py',
        '*train, evaluation[0], num_classes, k=k,',
        '*evaluation, evaluation[0], num_classes, k=k,',
        ('tests/test_evaluate.py',),
    ),
    Mutation(
        'eval-embeds-train-split-as-eval',
        'simclr_jax/evaluators/features.py',
        'return tuple(splits)',
        'return splits[0], splits[0]',
        ('tests/test_evaluate.py',),
    ),
    Mutation(
        'eval-l2-chosen-on-fitted-examples',
        'simclr_jax/linear_classifier.py',
        'logits(classifier, features[holdout_idx]), labels[holdout_idx], 1',
        'logits(classifier, features[fit_idx]), labels[fit_idx], 1',
        ('tests/test_linear_classifier.py',),
    ),
    Mutation(
        'eval-l2-ties-to-smaller',
        'simclr_jax/linear_classifier.py',
        'max(reversed(grid), key=',
        'max(grid, key=',
        ('tests/test_linear_classifier.py',),
    ),
    Mutation(
        'knn-votes-not-exponentiated',
        'simclr_jax/knn.py',
        'weights = jnp.exp(top_sim / temperature)',
        'weights = top_sim / temperature',
        ('tests/test_knn.py',),
    ),
    Mutation(
        'report-confusion-transposed',
        'simclr_jax/report.py',
        'confusion_matrix(eval_data[1], scores.argmax(axis=-1),',
        'confusion_matrix(scores.argmax(axis=-1), eval_data[1],',
        ('tests/test_report.py',),
    ),
    # Checkpoint restore (checkpoints.py, evaluators/features.py).
    Mutation(
        'resume-restores-earliest-checkpoint',
        'simclr_jax/core/checkpoints.py',
        'steps = sorted(manager.all_steps(), reverse=True)',
        'steps = sorted(manager.all_steps())',
        ('tests/test_main.py',),
    ),
    Mutation(
        'damaged-checkpoint-left-in-place',
        'simclr_jax/core/checkpoints.py',
        '      tf.io.gfile.rename(source, target)\n',
        '',
        ('tests/test_checkpoints.py',),
    ),
    Mutation(
        'eval-restores-earliest-checkpoint',
        'simclr_jax/evaluators/features.py',
        'step = max(steps) if step < 0 else step',
        'step = min(steps) if step < 0 else step',
        ('tests/test_evaluate.py',),
    ),
    # Augmentation (augment.py: tf.data; augment_jax.py: on device).
    Mutation(
        'augment-colour-ops-in-fixed-order',
        'simclr_jax/augment.py',
        'random_permutation(perm_seed, _NUM_JITTER_OPS)',
        'tf.range(_NUM_JITTER_OPS)',
        ('tests/test_augment.py',),
    ),
    Mutation(
        'augment-grayscale-dropped',
        'simclr_jax/augment.py',
        'lambda x, s: to_grayscale(x)',
        'lambda x, s: x',
        ('tests/test_augment.py',),
    ),
    Mutation(
        'augment-jax-colour-ops-in-fixed-order',
        'simclr_jax/augment_jax.py',
        'jnp.argsort(jax.random.uniform(perm_key, [_NUM_JITTER_OPS]))',
        'jnp.arange(_NUM_JITTER_OPS)',
        ('tests/test_augment_jax.py',),
    ),
    Mutation(
        'augment-jax-grayscale-dropped',
        'simclr_jax/augment_jax.py',
        'lambda x, _: to_grayscale(x)',
        'lambda x, _: x',
        ('tests/test_augment_jax.py',),
    ),
    Mutation(
        'augment-on-device-seeds-of-other-images',
        'simclr_jax/methods/simclr.py',
        "pretrain_views(batch['image'], batch['seed'],",
        "pretrain_views(batch['image'], batch['seed'][::-1],",
        ('tests/test_train_step.py',),
    ),
    # The probe's learning rate (optim.py).
    Mutation(
        'probe-learning-rate-scale-ignored',
        'simclr_jax/core/optim.py',
        'updates = {**updates, name: jax.tree.map(lambda u: scale * u, updates[name])}',
        'updates = dict(updates)',
        ('tests/test_optim.py',),
    ),
    # Stopping and locking (train.py, workdir_lock.py).
    Mutation(
        'loop-queues-steps-without-waiting',
        'simclr_jax/core/training_loop.py',
        '      jax.block_until_ready(metrics)\n      progress.step_done(step)',
        '      progress.step_done(step)',
        ('tests/test_stop_request.py',),
    ),
    Mutation(
        'lock-ignores-a-live-holder',
        'simclr_jax/core/workdir_lock.py',
        'raise WorkdirLocked(self._held_message(self._read(), alive=True)) from None',
        'return',
        ('tests/test_workdir_lock.py',),
    ),
    Mutation(
        'lock-of-a-dead-run-never-taken-over',
        'simclr_jax/core/workdir_lock.py',
        "if self._fd is not None or not _pid_alive(holder.get('pid')):",
        'if False:',
        ('tests/test_workdir_lock.py',),
    ),
    Mutation(
        'lock-heartbeat-ignored',
        'simclr_jax/core/workdir_lock.py',
        'if age <= STALE_SECS:',
        'if False:',
        ('tests/test_workdir_lock.py',),
    ),
    # The gradient cache (core/gradient_cache.py, methods/simclr.py).
    Mutation(
        'cache-contiguous-micro-batches',
        'simclr_jax/core/gradient_cache.py',
        'x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])\n'
        '    x = jnp.swapaxes(x, 0, 1)',
        'x = x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])',
        ('tests/test_gradient_cache.py',),
    ),
    Mutation(
        'cache-drops-the-direct-parameter-gradient',
        'simclr_jax/core/gradient_cache.py',
        '      objective_grads,\n',
        '      jax.tree.map(jnp.zeros_like, objective_grads),\n',
        ('tests/test_gradient_cache.py',),
    ),
    Mutation(
        'cache-last-micro-batch-statistics',
        'simclr_jax/methods/simclr.py',
        'jax.tree.map(lambda s: s.mean(0), micro_stats)',
        'jax.tree.map(lambda s: s[-1], micro_stats)',
        ('tests/test_gradient_cache.py',),
    ),
)


def copy_checkout(destination: pathlib.Path):
  """Copies the tracked and the untracked-but-not-ignored files of REPO_ROOT to destination."""
  listed = (
      subprocess.run(
          ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
          cwd=REPO_ROOT,
          check=True,
          capture_output=True,
      )
      .stdout.decode()
      .split('\0')
  )
  for name in filter(None, listed):
    source = REPO_ROOT / name
    if not source.is_file() and not source.is_symlink():
      continue  # Deleted in the working tree but still in the index.
    target = destination / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target, follow_symlinks=False)


def copy_environment(copy_root: pathlib.Path) -> dict:
  """Environment that makes Python in copy_root import its simclr_jax and find CIFAR-10."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(copy_root), env.get('PYTHONPATH')]))
  env.setdefault(
      'SIMCLR_CIFAR10_DIR', str((REPO_ROOT / '..' / 'shared' / 'data' / 'cifar10-jpeg').resolve())
  )
  return env


def imported_package(copy_root: pathlib.Path, env: dict) -> pathlib.Path:
  """The simclr_jax/__init__.py that Python run in copy_root imports."""
  out = subprocess.run(
      [sys.executable, '-c', 'import simclr_jax; print(simclr_jax.__file__)'],
      cwd=copy_root,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  )
  return pathlib.Path(out.stdout.strip().splitlines()[-1]).resolve()


def run_tests(copy_root, env, tests, timeout) -> tuple[str, float, str]:
  """(status, seconds, output tail) of pytest over `tests` in the copy."""
  start = time.perf_counter()
  try:
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:randomly', *tests],
        cwd=copy_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return 'timeout', time.perf_counter() - start, ''
  status = {0: 'survived', 1: 'caught'}.get(proc.returncode, f'error (exit {proc.returncode})')
  tail = '\n'.join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
  return status, time.perf_counter() - start, tail


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--list', action='store_true', help='list the mutations and exit')
  parser.add_argument('--only', nargs='+', metavar='NAME', help='run only these mutations')
  parser.add_argument(
      '--baseline',
      action='store_true',
      help='first check that the selected test files pass unmutated',
  )
  parser.add_argument(
      '--dry_run',
      action='store_true',
      help='copy, check the import and every snippet; run no tests',
  )
  parser.add_argument('--timeout', type=float, default=1800, help='seconds per pytest run')
  args = parser.parse_args()

  mutations = MUTATIONS
  if args.only:
    unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
    if unknown:
      parser.error(f'unknown mutations {unknown}; see --list')
    mutations = [m for m in MUTATIONS if m.name in args.only]
  if args.list:
    for m in mutations:
      print(f'{m.name:42} {m.file:34} {" ".join(m.tests)}')
    return 0

  rows = []
  with tempfile.TemporaryDirectory(prefix='simclr_mutation_') as tmp:
    copy_root = pathlib.Path(tmp).resolve()
    copy_checkout(copy_root)
    env = copy_environment(copy_root)
    package = imported_package(copy_root, env)
    print(f'Copy of {REPO_ROOT} in {copy_root}; it imports {package}.')
    if copy_root not in package.parents:
      print('The copy does not import its own simclr_jax; stopping.', file=sys.stderr)
      return 2

    baseline = {}
    if args.baseline and not args.dry_run:
      for tests in sorted({m.tests for m in mutations}):
        status, seconds, tail = run_tests(copy_root, env, tests, args.timeout)
        baseline[tests] = status == 'survived'
        print(
            f'baseline {" ".join(tests)}: {"pass" if baseline[tests] else status} '
            f'({seconds:.0f} s)' + ('' if baseline[tests] else f'\n{tail}'),
            flush=True,
        )

    for m in mutations:
      path = copy_root / m.file
      original = path.read_text() if path.is_file() else ''
      count = original.count(m.old)
      if count != 1:
        rows.append((m, f'stale ({count} matches)', 0.0))
      elif args.dry_run:
        rows.append((m, 'applies', 0.0))
      elif baseline and not baseline[m.tests]:
        rows.append((m, 'skipped (baseline fails)', 0.0))
      else:
        path.write_text(original.replace(m.old, m.new))
        try:
          status, seconds, tail = run_tests(copy_root, env, m.tests, args.timeout)
        finally:
          path.write_text(original)
        rows.append((m, status, seconds))
        if status != 'caught':
          print(f'{m.name}: {status}\n{tail}', flush=True)
      print(f'{m.name}: {rows[-1][1]}', flush=True)

  print('\n| mutation | file | result | seconds | tests |\n|---|---|---|---|---|')
  for m, status, seconds in rows:
    print(f'| {m.name} | {m.file} | {status} | {seconds:.0f} | {", ".join(m.tests)} |')
  # Non-zero when a snippet is stale, or (when tests ran) a mutation was not caught.
  return int(
      any(
          status.startswith('stale') or (not args.dry_run and status != 'caught')
          for _, status, _ in rows
      )
  )


if __name__ == '__main__':
  sys.exit(main())
