"""simclr_jax: SimCLR in JAX/Flax."""

import setuptools

setuptools.setup(
    name='simclr_jax',
    version='0.1.0',
    description='SimCLR contrastive self-supervised learning in JAX/Flax, sharded over devices.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['simclr_jax', 'simclr_jax.*']),
    python_requires='>=3.10',
    # Versions tested together (Python 3.11, CPU); see README for GPU/TPU jaxlib installs.
    install_requires=[
        'jax==0.10.2',
        'jaxlib==0.10.2',
        'flax==0.12.8',
        'optax==0.2.8',
        'orbax-checkpoint==0.12.8',
        'ml-collections==1.1.0',
        'clu==0.0.12',
        'tensorflow-cpu==2.21.0',  # tf.data only; never touches an accelerator.
        'tensorflow-datasets==4.9.10',
        'tensorboard==2.21.0',  # clu's summary writer needs it.
        'importlib_resources==7.1.0',  # TFDS builders need it with etils 1.15.
        'numpy==2.4.6',
        'safetensors==0.8.0',  # export --format=torch (a torchvision state_dict).
        'pillow==13.0.0',
        # The visual report (python -m simclr_jax.report) and the TensorBoard augmentation grid.
        'matplotlib==3.11.2',
        'scikit-learn==1.9.1',  # t-SNE.
    ],
    extras_require={
        # nbclient, nbformat and ipykernel run notebooks/ headless; threadpoolctl (a
        # scikit-learn dependency) keeps t-SNE to one OpenMP thread in the tests; scipy's
        # two-sample tests compare the JAX and tf.data augmentations; ruff is the linter and
        # pyink (with black, which it builds on) the formatter (.ci/run);
        # pytest-xdist runs the tests on both cores of a small machine
        # (most of their time is single-threaded XLA compilation).
        'test': [
            'pytest==9.0.3',
            'pytest-xdist==3.8.0',
            'execnet==2.1.2',
            'nbclient==0.11.0',
            'nbformat==5.11.1',
            'ipykernel==7.4.0',
            'threadpoolctl==3.8.0',
            'scipy==1.17.1',
            'ruff==0.17.6',
            'pyink==26.5.1',
            'black==26.5.1',
        ],
        # benchmarks/throughput.py --torch: the PyTorch CPU speed reference.
        'torch_reference': ['torch==2.13.0'],
        # tests/test_export_torch.py against the real torchvision (a CUDA build of ~5.5 GB that
        # runs on the CPU; PyPI's torchvision does not load beside torch 2.13.0's CPU build).
        'torchvision': ['torch==2.14.1', 'torchvision==0.29.1'],
    },
)
