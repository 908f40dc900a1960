"""huge_pages: the re-exec keeps the command line and other tunables, and the pages are huge."""

import os
import subprocess
import sys

import pytest

from simclr_jax.core import huge_pages

pytestmark = pytest.mark.skipif(
    not huge_pages.supported(), reason='needs glibc >= 2.35 and transparent huge pages'
)

# Touches 256 MiB from malloc (numpy's allocator asks for huge pages itself, so ctypes), then
# prints how much of the process is backed by transparent huge pages.
_ALLOCATE = """
import ctypes
import sys
from simclr_jax.core import huge_pages
if sys.argv[1] == 'reexec':
  huge_pages.reexec_with_huge_pages()
print('argv', sys.argv[1:])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(256 << 20)
ctypes.memset(block, 1, 256 << 20)
with open('/proc/self/smaps_rollup') as f:
  huge = [int(line.split()[1]) for line in f if line.startswith('AnonHugePages:')][0]
print('huge_kib', huge)
"""


def _run(mode, tunables):
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if tunables:
    env['GLIBC_TUNABLES'] = tunables
  out = subprocess.run(
      [sys.executable, '-c', _ALLOCATE, mode, 'an argument'],
      env=env,
      check=True,
      capture_output=True,
      text=True,
  ).stdout.splitlines()
  return out[0], int(out[1].split()[1])


def test_reexec_keeps_the_arguments_and_gets_huge_pages():
  argv, huge_kib = _run('reexec', '')
  assert argv == "argv ['reexec', 'an argument']"
  assert huge_kib >= 128 << 10  # At least half of the buffer.


@pytest.mark.skipif(
    huge_pages.transparent_huge_pages_mode() != 'madvise',
    reason='in THP mode "always" every process gets huge pages',
)
def test_without_the_tunable_malloc_gets_small_pages():
  assert _run('plain', '')[1] < 16 << 10


def test_other_tunables_are_kept_and_a_set_hugetlb_is_left_alone():
  code = (
      'import os; from simclr_jax.core import huge_pages; huge_pages.reexec_with_huge_pages(); '
      'print(os.environ["GLIBC_TUNABLES"])'
  )
  for given, expected in (
      ('glibc.malloc.check=0', f'glibc.malloc.check=0:{huge_pages.TUNABLE}'),
      ('glibc.malloc.hugetlb=0', 'glibc.malloc.hugetlb=0'),
  ):
    out = subprocess.run(
        [sys.executable, '-c', code],
        env=dict(os.environ, GLIBC_TUNABLES=given),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == expected
