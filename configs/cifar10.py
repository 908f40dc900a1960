r"""SimCLR on CIFAR-10: the official ResNet-18 recipe (batch 512, 1000 epochs, LARS).

Run:
  python -m simclr_jax.main --config=configs/cifar10.py --workdir=/tmp/simclr_cifar10

Offline, from a folder of images laid out as root/<split>/<class>/<image>:
  python -m simclr_jax.main --config=configs/cifar10.py --workdir=/tmp/simclr_cifar10 \
      --config.dataset=../shared/data/cifar10-jpeg

On several hosts (see launch/), every host runs the same command on a shared workdir; add
`--config.data_shards=8` (say) to get the same batches, and so the same run, on 1, 2, 4 or 8 hosts.

Expected result: about 91% top-1 linear evaluation on the CIFAR-10 test split after the full
1000 epochs (official google-research/simclr README; solo-learn reports 90.74% online linear
probe for a B=256 variant). The online linear probe logged as `probe_accuracy` tracks it.
"""

import ml_collections


def get_config():
  """Returns the CIFAR-10 pretraining config."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'cifar10'  # TFDS name, or path to an image folder root/<split>/<class>/<img>.
  config.tfds_data_dir = ''  # TFDS data_dir; '' uses TFDS's default (~/tensorflow_datasets).
  config.train_split = 'train'  # Split (TFDS) or sub-folder (image folder) to pretrain on.
  config.image_size = 32  # Side of the square crops fed to the encoder; <= 32 uses the CIFAR stem.
  # Side of the pretraining views (0: image_size). Smaller trains faster; evaluation still feeds
  # image_size images, which suits an encoder trained on crops (Touvron et al. 2019, FixRes).
  config.pretrain_image_size = 0
  config.shuffle_buffer_size = 50_000  # Examples in the tf.data shuffle buffer (per shard).
  config.skip_bad_images = False  # Image folders: leave out undecodable files (else: an error).
  config.prefetch_batches = 2  # Global batches placed on the devices ahead of the train step.
  # Data shards of the train split (0: one per process). V > 0 makes the batches the same for
  # any process count dividing V (each process reads V / processes shards, batch / V examples
  # from each); V must divide batch_size (and finetune.batch_size).
  config.data_shards = 0

  # Augmentation (SimCLR appendix A; every parameter of the reference is a knob here).
  config.augment = ml_collections.ConfigDict()
  # 'simclr': the paper's views, the keys below; 'weak': a down-scaled CIFAR-10 study's
  # policy, the keys of config.augment.weak (simclr_jax/augment.py, weak_view).
  config.augment.policy = 'simclr'
  config.augment.crop_area_min = 0.08  # Random resized crop: smallest area fraction.
  config.augment.crop_area_max = 1.0  # Random resized crop: largest area fraction.
  config.augment.aspect_ratio_min = 3 / 4  # Random resized crop: smallest width/height ratio.
  config.augment.aspect_ratio_max = 4 / 3  # Random resized crop: largest width/height ratio.
  config.augment.flip_prob = 0.5  # Probability of a horizontal flip.
  config.augment.color_jitter_prob = 0.8  # Probability of applying colour jitter.
  config.augment.color_strength = 0.5  # s: brightness/contrast/saturation 0.8s, hue 0.2s.
  # (): the jitter of color_strength; else its (brightness, contrast, saturation, hue) maxima.
  config.augment.color_jitter = ()
  # Brightness as the reference's simclrv2 (multiply by U[1-b, 1+b]) or simclrv1 (add
  # U[-b, b]) colour jitter; the other three ops are the same in both.
  config.augment.color_jitter_impl = 'simclrv2'
  config.augment.grayscale_prob = 0.2  # Probability of converting to grayscale.
  config.augment.blur_prob = 0.0  # Probability of Gaussian blur (0 = off, as for CIFAR).
  config.augment.blur_sigma_min = 0.1  # Gaussian blur: smallest sigma (pixels).
  config.augment.blur_sigma_max = 2.0  # Gaussian blur: largest sigma (pixels).
  config.augment.solarize_prob = 0.0  # Probability of solarising (x >= 0.5 -> 1 - x; BYOL).
  # Values of the keys above that the second view of each pair uses instead (BYOL's asymmetric
  # blur and solarisation); empty: both views alike.
  config.augment.second_view = ml_collections.ConfigDict()
  # Multi-crop (DINO only): `number` extra crops per image of side `size`, made as the first
  # view with the other values here in place of its own (the DINO paper's: blur p 0.5).
  config.augment.local_crops = ml_collections.ConfigDict()
  config.augment.local_crops.number = 0  # Local crops per image; 0 = none (two views only).
  config.augment.local_crops.size = 16  # Their side in pixels (DINO on 224 images: 96).
  config.augment.local_crops.crop_area_min = 0.05  # Their crop area fraction ~ [min, max].
  config.augment.local_crops.crop_area_max = 0.4
  # The weak policy: per view, with p crop_branch_prob a crop resized back and a flip, else
  # a flip and a colour jitter (torchvision ColorJitter's brightness/contrast/saturation/hue).
  config.augment.weak = ml_collections.ConfigDict()
  config.augment.weak.crop_branch_prob = 0.5  # Probability of the crop branch.
  config.augment.weak.crop_area_min = 0.7  # Crop area fraction ~ U[min, max].
  config.augment.weak.crop_area_max = 1.0
  config.augment.weak.aspect_ratio_min = 0.8  # Crop width/height ~ U[min, max].
  config.augment.weak.aspect_ratio_max = 1.2
  config.augment.weak.flip_prob = 0.3  # Probability of a horizontal flip (either branch).
  config.augment.weak.brightness = 0.1  # Brightness factor ~ U[1 - x, 1 + x].
  config.augment.weak.contrast = 0.1  # Contrast factor ~ U[1 - x, 1 + x].
  config.augment.weak.saturation = 0.1  # Saturation factor ~ U[1 - x, 1 + x].
  config.augment.weak.hue = 0.05  # Hue shift ~ U[-x, x] (fraction of the colour circle).
  # Pretraining views made on the accelerator in the train step (simclr_jax/augment_jax.py,
  # same distribution) while tf.data only decodes; needs images of one size.
  config.augment_on_device = False

  # Model.
  config.model = ml_collections.ConfigDict()
  # resnet18|resnet34|resnet50|resnet101|resnet152|resnet200 | vit_ti|vit_s|vit_b|vit_l.
  config.model.name = 'resnet18'
  config.model.width_multiplier = 1.0  # Channel multiplier; 0.25 gives a 16-channel stem.
  # Convolutions: xla | matmul (as patch matrix products: equal results, faster on CPU) |
  # auto (matmul on CPU, XLA's own on GPU and TPU).
  config.model.conv_impl = 'auto'
  # reference: a projection shortcut (1x1 conv + BN) on the first block of every stage, as in
  # google-research/simclr; torchvision: only where the shape changes (loads torchvision weights).
  config.model.shortcut = 'reference'
  # ViT encoders (model.name vit_ti, vit_s, vit_b, vit_l: models/vit.py) read these six.
  config.model.depth = 0  # Transformer blocks; 0: the size's (12, or 24 for vit_l).
  config.model.patch_size = 4  # Patch side: 4 at 32x32 (64 tokens), 16 at 224x224.
  config.model.pool = 'cls'  # h: the [CLS] token (cls) or the mean of the patch tokens (gap).
  config.model.position_embedding = 'learned'  # learned | sincos (fixed 2-D, as MoCo v3).
  # ViT dropout rate after the position embedding and every dense layer but qkv.
  config.model.dropout = 0.0
  # ViT stochastic depth: block i of d drops its residual branches with drop_path * i / (d - 1).
  config.model.drop_path = 0.0
  config.model.head_layers = 3  # Projection head depth (SimCLRv2: 3; v1: 2).
  config.model.head_output_dim = 128  # Dimension of z, the projection the loss sees.
  config.model.bn_momentum = 0.9  # BatchNorm running-average momentum.
  config.model.bn_epsilon = 1e-5  # BatchNorm epsilon.

  config.dtype = 'float32'  # Compute type: float32 | bfloat16 (params, BN stats, loss: float32).
  config.remat = False  # Recompute residual blocks in the backward pass (less memory).

  # Loss.
  config.temperature = 0.5  # NT-Xent temperature tau (0.5 is best for CIFAR-10 at convergence).
  # Anchors per device and view whose logits are computed at once (0: all); same loss and
  # gradients, O(chunk * batch) instead of O(batch^2) memory. Must divide batch / devices.
  config.contrastive_chunk_size = 0
  # Gradient cache (Gao et al. 2021): the model runs on batch_size / microbatches images at a
  # time, twice, while the loss keeps every negative of the whole batch; BatchNorm statistics
  # are then per micro-batch. 1: off. Must divide batch_size / devices.
  config.microbatches = 1

  # Optimisation.
  config.batch_size = 512  # Global batch size, split evenly over all devices of all hosts.
  config.num_epochs = 1000  # Pretraining epochs over the train split.
  config.num_train_steps = -1  # If > 0, overrides num_epochs.
  config.optimizer = 'lars'  # lars|sgd|adamw.
  config.learning_rate = 1.0  # Base learning rate before lr_scaling.
  config.lr_scaling = 'linear'  # linear: base * batch / 256; sqrt: base * sqrt(batch).
  config.warmup_epochs = 10.0  # Linear warm-up epochs (fractions allowed), then cosine to 0.
  config.weight_decay = 1e-4  # Weight decay (not on BatchNorm parameters and biases).
  config.momentum = 0.9  # Momentum of LARS and SGD; beta1 of AdamW.
  # The online probe's lr, as a multiple of the encoder's. The reference uses 1 (no LARS
  # trust ratio), at which the probe's loss diverges on these features (BENCHMARKS.md). The
  # probe only monitors: its lr does not change what the encoder learns.
  config.probe_learning_rate_scale = 0.01
  config.lars_trust_coefficient = 0.001  # LARS eta.

  # Evaluation: --config.mode=evaluate --config.eval.protocol=NAME evaluates a pretraining
  # run's encoder, writing into its own --workdir.
  # pretrain | evaluate; older spellings, for one more release: linear_eval | knn_eval | finetune.
  config.mode = 'pretrain'
  config.method = 'simclr'  # Pretraining method (methods/): simclr | byol (configs/*_byol.py).
  config.pretrained_workdir = ''  # Workdir of the pretraining run to evaluate.
  config.pretrained_step = -1  # Checkpoint step to evaluate; -1 = the latest.
  config.eval = ml_collections.ConfigDict()
  config.eval.encoder = 'pretrained'  # pretrained | random (same architecture) | pixels.
  # Which of a pretrained run's encoders: online (the one trained: SimCLR's, BYOL's online,
  # DINO's student) | target (the EMA target: BYOL's, MoCo v3's momentum encoder, DINO's
  # teacher, which the DINO authors evaluate).
  config.eval.weights = 'online'
  # Labelled dataset of evaluations and monitors ('': config.dataset), e.g. when pretraining
  # on a flat folder of unlabelled images.
  config.eval.dataset = ''
  config.eval.split = 'test'  # Split scored; classifiers and kNN banks use config.train_split.
  config.eval.batch_size = 512  # Global batch for feature extraction.
  config.eval.max_examples = 0  # If > 0, a fixed seeded subset of this many examples per split.
  config.eval.holdout_fraction = 0.1  # Train fraction held out to choose the L2 strength.
  config.eval.max_iterations = 1000  # L-BFGS iterations of the linear classifier.
  config.eval.knn_k = 200  # Neighbours that vote in kNN.
  config.eval.knn_temperature = 0.1  # A neighbour's vote weighs exp(similarity / temperature).
  config.eval.pca_dim = 0  # If > 0, linear and MLP probes see the top principal components.
  # The MLP probe (eval.protocol=mlp): standardised h -> hidden ReLU layer -> classes, Adam.
  config.eval.mlp_hidden_dim = 512  # Hidden units.
  config.eval.mlp_epochs = 20  # Epochs over the train features.
  config.eval.mlp_learning_rate = 1e-3  # Adam's learning rate.
  config.eval.mlp_batch_size = 256  # Minibatch of features.
  # linear: L-BFGS on features | linear_sgd: the reference's | knn | mlp | finetune (evaluators/).
  config.eval.protocol = 'linear'
  config.eval.linear_protocol = 'lbfgs'  # Older: with mode=linear_eval, lbfgs | sgd.
  config.eval.monitors = 'knn'  # Evaluators run in pretraining (comma-separated: knn,linear).
  config.eval_every_steps = 5000  # Steps between monitor evaluations in pretraining; 0 = off.

  # Fine-tuning (eval.protocol=finetune) and the reference linear evaluation
  # (eval.protocol=linear_sgd, which freezes the whole encoder and uses all labels).
  config.finetune = ml_collections.ConfigDict()
  config.finetune.label_fraction = 1.0  # Class-balanced fraction of train labels: 0.01, 0.1, 1.
  config.finetune.subset_seed = 0  # Seeds the label subsets (nested: 1% inside 10%).
  config.finetune.fine_tune_after_block = -1  # Frozen: stem (0) to stage k (1-4); -1: none.
  config.finetune.keep_head_layers = 0  # Projection-head layers kept under the classifier.
  config.finetune.epochs = 100.0  # Epochs over the labelled subset (reference: 100 for CIFAR-10).
  config.finetune.batch_size = 512  # Global batch size.
  config.finetune.learning_rate = 0.1  # Base lr (reference), scaled by finetune.lr_scaling.
  config.finetune.lr_scaling = 'linear'  # linear: base * batch / 256 | sqrt: base * sqrt(batch).
  # momentum: Nesterov SGD (the reference's linear evaluation) | lars (its fine-tuning).
  config.finetune.optimizer = 'momentum'
  config.finetune.momentum = 0.9  # Momentum (Nesterov for 'momentum', heavy-ball for LARS).
  config.finetune.lars_trust_coefficient = 0.001  # LARS eta (finetune.optimizer=lars).
  config.finetune.weight_decay = 0.0  # Reference: none.
  config.finetune.warmup_epochs = 0.0  # Linear warm-up epochs, then cosine decay to 0.

  # Bookkeeping.
  config.seed = 0  # Seeds initialisation, data order and augmentation.
  config.log_every_steps = 50  # Steps between metric writes.
  config.progress_every_secs = 30.0  # Seconds between progress lines (rate, ETA) in the log.
  # Restart the program with glibc.malloc.hugetlb=1 (Linux, glibc >= 2.35): XLA:CPU's
  # per-step buffers then fault in 2 MiB pages, not 4 KiB ones (BENCHMARKS.md).
  config.huge_page_malloc = True
  config.checkpoint_every_steps = 1000  # Steps between checkpoints (one is also saved at the end).
  config.keep_checkpoints = 3  # Most recent checkpoints kept in WORKDIR/checkpoints.
  return config
