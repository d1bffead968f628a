"""Training: one loop for every model family, with a small train-step module per Keras backend.

Nothing here imports mlflow, prefect or dvc: training runs where only Keras and a backend exist.
"""
