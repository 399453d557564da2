"""vaelab: variational autoencoders on MNIST-style images.

Built from PyTorch autodiff primitives following the STATS271 homework
(``docs/derivations.md`` has the math). The packages, bottom up:
``prob`` -> ``models`` -> ``inference`` -> ``training`` ->
``evaluation`` -> ``figures`` -> ``runs`` -> ``cli`` (docs/design.md).
"""

__version__ = "0.1.0"
