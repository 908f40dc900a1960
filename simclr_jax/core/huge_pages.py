"""Transparent huge pages for glibc malloc's large blocks, set by re-executing the process.

XLA on CPU allocates a step's temporaries anew at every step, and glibc serves large blocks
with fresh mmaps, so each step faults its whole working set in, 4 KiB page by 4 KiB page.
glibc >= 2.35 asks the kernel for transparent huge pages on those mappings when started with
the tunable glibc.malloc.hugetlb=1; the kernel grants them when
/sys/kernel/mm/transparent_hugepage/enabled is 'madvise' or 'always'. Tunables are read at
process start, hence the re-exec (its effect is measured in BENCHMARKS.md).
"""

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def transparent_huge_pages_mode() -> str:
  """The kernel's THP mode (always, madvise or never), '' where unknown (not Linux)."""
  try:
    with open(_THP_MODE_FILE) as f:
      modes = f.read().split()
  except OSError:
    return ''
  return next((m[1:-1] for m in modes if m.startswith('[')), '')


def supported() -> bool:
  """Whether this process's C library has the tunable (glibc >= 2.35) and the kernel THP."""
  libc, version = platform.libc_ver()
  if libc != 'glibc' or not version:
    return False
  major, minor = (int(part) for part in version.split('.')[:2])
  return (major, minor) >= (2, 35) and transparent_huge_pages_mode() in ('always', 'madvise')


def reexec_with_huge_pages() -> None:
  """Replaces this process with the same command line, glibc.malloc.hugetlb=1 added to
  GLIBC_TUNABLES; returns at once where a hugetlb tunable is already set or is unsupported."""
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables or not supported():
    return
  env = dict(os.environ, GLIBC_TUNABLES=':'.join(t for t in (tunables, TUNABLE) if t))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
