"""A toy encoder family (models/encoders.py) for tests whose subject is not the encoder.

Dense on 4x4 patches -> mean -> BatchNorm -> ReLU: it compiles in a fraction of the tiny
ResNet's time (the train step's compile dominates such tests) and takes images of any size
(DINO's multi-crop, smaller pretraining views). The ResNet's own pieces are tested in
test_models.py, test_train_step.py and the 8-device test of test_train.py. Use the
`toy_encoder` fixture of conftest.py, then config.model.name = NAME.
"""

import flax.linen as nn

NAME = 'toy_dense'
NAMES = (NAME,)


class ToyEncoder(nn.Module):

  @nn.compact
  def __call__(self, images, train: bool):
    x = nn.Conv(24, (4, 4), strides=(4, 4), use_bias=False)(images).mean(axis=(1, 2))
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


def validate(model_config):
  del model_config


def build(model_config, *, image_size, dtype, fine_tune_after_block=-1, remat=False):
  del model_config, image_size, dtype, fine_tune_after_block, remat
  return ToyEncoder(name='encoder')


def num_parts(model_config):
  del model_config
  return 1


def part_of(model_config, names):
  del model_config, names
  return 0
