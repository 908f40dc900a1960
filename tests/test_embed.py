"""simclr_jax.embed: any folder embedded row by row, bad files named, neighbours found."""

import json
import os
import shutil
import subprocess
import sys

from absl import flags
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from multidevice import REPO_ROOT
from simclr_jax import embed


@pytest.fixture(scope='module')
def encoder(pretrained_workdir):
  return embed.Encoder(str(pretrained_workdir))


def _own_folder(cifar10_subset, root):
  """A flat folder: 5 CIFAR test images, a large grayscale PNG, a corrupt 'JPEG', a text file."""
  root.mkdir()
  sources = sorted((cifar10_subset / 'test' / 'cat').iterdir())[:3]
  sources += sorted((cifar10_subset / 'test' / 'ship').iterdir())[:2]
  for i, path in enumerate(sources):
    shutil.copy(path, root / f'img{i}.jpg')
  Image.open(sources[0]).convert('L').resize((96, 80)).save(root / 'big_gray.png')
  (root / 'broken.jpg').write_bytes(b'not an image')
  (root / 'notes.txt').write_text('ignored')
  return sources


def test_embeds_a_flat_folder_row_by_row(encoder, cifar10_subset, tmp_path):
  sources = _own_folder(cifar10_subset, tmp_path / 'mine')
  # Batches of 4 over 6 decodable images: the last one is padded, the broken file dropped.
  summary = embed.embed_folder(encoder, str(tmp_path / 'mine'), str(tmp_path / 'out'), 4)
  out = tmp_path / 'out'
  table = np.load(out / 'embeddings.npy')
  paths = (out / 'paths.txt').read_text().splitlines()
  assert [p.rsplit('/', 1)[1] for p in paths] == ['big_gray.png'] + [
      f'img{i}.jpg' for i in range(5)
  ]
  assert table.shape == (6, 64) and table.dtype == np.float32
  assert (out / 'skipped.txt').read_text() == f'{tmp_path}/mine/broken.jpg\n'
  assert not (out / 'labels.npy').exists()
  assert summary['num_embedded'] == 6 and summary['num_skipped'] == 1
  assert json.loads((out / 'embed_info.json').read_text())['step'] == 4
  # Each row is h of its 32x32 image as the model computes it directly (eval view of a 32x32
  # image: the image itself), decoded by TensorFlow as the pipeline does (PIL's JPEG decoder
  # differs by a level here and there).
  images = np.stack(
      [tf.io.decode_jpeg(tf.io.read_file(str(p))).numpy().astype(np.float32) / 255 for p in sources]
  )
  direct = encoder.model.apply(encoder.variables, images, train=False, method='encode')
  np.testing.assert_allclose(table[1:], direct, rtol=1e-5, atol=1e-5)


def test_class_folders_give_labels_and_queries_find_themselves(
    encoder, cifar10_subset, tmp_path, caplog
):
  root = tmp_path / 'labelled'
  for name in ('cat', 'ship'):
    shutil.copytree(cifar10_subset / 'test' / name, root / name)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'embeddings.npy.part1.host.99.npy').write_bytes(b'a killed run')
  embed.embed_folder(encoder, str(root), str(out))
  # Named, not deleted: another run may be writing there.
  assert '1 part files of an embedding run that did not finish' in caplog.text
  assert (out / 'embeddings.npy.part1.host.99.npy').exists()
  paths = (out / 'paths.txt').read_text().splitlines()
  labels = np.load(out / 'labels.npy')
  assert (out / 'classes.txt').read_text() == 'cat\nship\n'
  np.testing.assert_array_equal(labels, [int('/ship/' in p) for p in paths])
  results = embed.nearest(encoder, str(out), paths[3], k=4)
  ((query, found),) = results
  assert query == paths[3] and found[0][0] == paths[3] and found[0][1] > 0.9999
  assert len(found) == 4 and [s for _, s in found] == sorted((s for _, s in found), reverse=True)
  # Against a brute-force ranking of all rows.
  table = np.load(out / 'embeddings.npy')
  table = table / np.linalg.norm(table, axis=1, keepdims=True)
  expected = np.argsort(-(table @ table[3]), kind='stable')[:4]
  assert [p for p, _ in found] == [paths[i] for i in expected]


def test_strict_mode_names_bad_files_before_embedding(encoder, cifar10_subset, tmp_path):
  _own_folder(cifar10_subset, tmp_path / 'mine')
  with pytest.raises(ValueError, match=r'1 of the 7 images .* cannot be decoded: .*broken\.jpg'):
    embed.embed_folder(
        encoder, str(tmp_path / 'mine'), str(tmp_path / 'out'), skip_bad_images=False
    )
  assert not (tmp_path / 'out' / 'embeddings.npy').exists()


def test_command_line_query_and_figure(pretrained_workdir, cifar10_subset, tmp_path, capsys):
  _own_folder(cifar10_subset, tmp_path / 'mine')
  flag_values = flags.FlagValues()
  embed.define_flags(flag_values)
  flag_values(
      [
          'embed',
          f'--workdir={pretrained_workdir}',
          f'--images={tmp_path}/mine',
          f'--output={tmp_path}/out',
          f'--query={tmp_path}/mine/img2.jpg',
          '--k=3',
      ]
  )
  embed.main(['embed'], flag_values)
  lines = capsys.readouterr().out.splitlines()
  assert f'{tmp_path}/mine/img2.jpg:' in lines and (tmp_path / 'out' / 'neighbours.png').exists()
  assert lines[lines.index(f'{tmp_path}/mine/img2.jpg:') + 1].endswith('img2.jpg')


def test_two_processes_embed_like_one(encoder, pretrained_workdir, cifar10_subset, tmp_path):
  root = tmp_path / 'labelled'  # 31 images in 3 classes, one undecodable: shares of 15 and 16.
  for name in ('bird', 'cat', 'ship'):
    shutil.copytree(cifar10_subset / 'test' / name, root / name)
  (root / 'cat' / 'broken.jpg').write_bytes(b'not an image')
  one = embed.embed_folder(encoder, str(root), str(tmp_path / 'one'), 8)
  env = dict(os.environ, MODULE='simclr_jax.embed', PYTHON=sys.executable)
  proc = subprocess.run(
      [
          str(REPO_ROOT / 'launch' / 'local.sh'),
          '2',
          '1',
          f'--workdir={pretrained_workdir}',
          f'--images={root}',
          f'--output={tmp_path / "two"}',
          '--batch_size=8',
      ],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = proc.stdout.splitlines()  # Both processes' output and logs, each line prefixed.
  assert f'[0] Embedded 30 images into {tmp_path}/two/embeddings.npy (1 skipped).' in lines
  assert not any(line.startswith('[1] Embedded') for line in lines)  # Process 0 speaks.
  two = json.loads((tmp_path / 'two' / 'embed_info.json').read_text())
  assert two['num_processes'] == 2 and one['num_processes'] == 1
  for name in ('paths.txt', 'skipped.txt', 'classes.txt'):
    assert (tmp_path / 'two' / name).read_text() == (tmp_path / 'one' / name).read_text(), name
  np.testing.assert_array_equal(
      np.load(tmp_path / 'two' / 'labels.npy'), np.load(tmp_path / 'one' / 'labels.npy')
  )
  # The same rows from batches split otherwise (shares of 15 and 16 images, batches of 8).
  np.testing.assert_allclose(
      np.load(tmp_path / 'two' / 'embeddings.npy'),
      np.load(tmp_path / 'one' / 'embeddings.npy'),
      rtol=1e-5,
      atol=1e-6,
  )
  assert sorted(os.listdir(tmp_path / 'two')) == sorted(os.listdir(tmp_path / 'one'))  # No parts.


def test_a_part_process_0_cannot_see_is_named(tmp_path):
  done = tmp_path / 'done.npy'
  np.save(done, np.ones(3, bool))
  shares = [
      {'part': str(tmp_path / 'missing.npy'), 'done': str(done), 'feature_dim': 4},
      {'part': None, 'done': None, 'feature_dim': None},
  ]
  with pytest.raises(
      ValueError,
      match=r'Process 0 cannot see .*missing\.npy, which process 0 .* shared file system',
  ):
    embed._join_shares(shares, 4, str(tmp_path / 'joined.npy'))
