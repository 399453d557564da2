"""vaelab: variational autoencoders on MNIST-style images.

Built from PyTorch autodiff primitives following the STATS271 homework
(``docs/derivations.md`` has the math). The layers, bottom up:
``data``/``distributions`` -> ``model``/``objectives`` -> ``train``/
``evaluate`` -> ``run``/``report``/``plots`` -> ``cli``.
"""

__version__ = "0.1.0"
