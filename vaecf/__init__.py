"""vaecf: variational autoencoders for collaborative filtering in JAX.

Importing the package is cheap: submodules load what they need. Training core in
vaecf/ (data, models, steps, train, evaluate, checkpoints), serving in
vaecf/serving (`from vaecf import serving`), research tools in vaecf/tools.
"""
__version__ = '0.1.0'
