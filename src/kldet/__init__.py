"""KLDet: tiny-object detection in remote-sensing images via Kullback-Leibler divergence.

The package root holds only ``__version__`` and imports nothing, so ``import kldet`` (and every CLI's start)
stays fast; the public API is in the subpackages: :mod:`kldet.model` (the detector), :mod:`kldet.assign`
(assigners), :mod:`kldet.data` (readers), :mod:`kldet.evaluation` (metrics), :mod:`kldet.checkpoint`.
"""

__version__ = "0.1.0"
