"""Prefect flows and deployments for the imagegen pipeline (they call the same stage functions as dvc.yaml)."""
