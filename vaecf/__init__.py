"""vaecf: variational autoencoders for collaborative filtering in JAX.

Importing the package is cheap; submodules load what they need.
"""
__version__ = '0.1.0'
