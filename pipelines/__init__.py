"""Prefect orchestration of the imagegen pipeline: a flow derived from dvc.yaml (one task per DVC stage)."""
