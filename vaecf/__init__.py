"""vaecf: variational autoencoders for collaborative filtering in JAX.

Importing the package is cheap; submodules load what they need.
"""
__version__ = '0.1.0'


def __getattr__(name: str):
  # Lazy, so `import vaecf` does not pull in jax for code that never recommends.
  if name == 'Recommender':
    from vaecf.recommend import Recommender
    return Recommender
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
