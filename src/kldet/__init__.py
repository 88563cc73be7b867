"""KLDet: tiny-object detection in remote-sensing images via Kullback-Leibler divergence."""

__version__ = "0.1.0"
