"""muse_jax: continuous emotion recognition (MuSe-Wild 2020) in JAX/Flax."""

from setuptools import find_packages
from setuptools import setup

setup(
  name='muse_jax',
  version='0.1.0',
  description='LSTM + self-attention continuous emotion recognition (MuSe-Wild 2020) in JAX/Flax',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  packages=find_packages(include=['muse_jax', 'muse_jax.*']),
  python_requires='>=3.12',
  install_requires=[
    'jax>=0.8',
    'flax>=0.12',
    'optax>=0.2.5',
    'orbax-checkpoint>=0.11',
    'numpy>=2.0',
    'pandas>=2.2',
    'tensorflow-datasets>=4.9.8',
    'array-record>=0.8',
    'ml-collections>=1.0',
    'absl-py>=2.1',
    'tensorboardX>=2.6',
    'matplotlib>=3.8',
  ],
  extras_require={
    'test': ['pytest>=8.0', 'pytest-xdist>=3.5', 'ruff>=0.15'],
    'search': ['optuna>=4.0'],
    'features': [
      'opensmile>=2.5',
      'soundfile>=0.12',
      'audresample>=1.3',
      'tokenizers>=0.15',
      'safetensors>=0.4',
    ],
  },
)
