"""Evaluation: the feature extractor and sample-quality metrics."""
