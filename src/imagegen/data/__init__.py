"""Datasets: raw sources, the processed on-disk format, and batches for training."""
