"""imagegen: reproducible training, distillation, evaluation and export of image generators."""

__version__ = "0.1.0"
