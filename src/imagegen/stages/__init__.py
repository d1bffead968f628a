"""Pipeline stages: one plain function each, ``run_<stage>(params, paths...) -> Path``.

The CLI (and so ``dvc.yaml``) and the Prefect flow call these same functions; nothing here knows which
of them, or a person, is calling.
"""
