"""Process start-up (imagegen.startup): TensorFlow/Keras do not import scikit-learn, pandas or JAX for nothing,
and everything else still can."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from imagegen import startup


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "KERAS_BACKEND": "tensorflow", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keras_on_tensorflow_starts_without_sklearn_pandas_or_jax_and_they_still_import_elsewhere() -> None:
    proc = run_python(
        """
        import sys
        from imagegen import startup
        assert startup.install()
        import keras, numpy as np
        import tensorflow as tf
        print(sorted(m for m in ("sklearn", "pandas", "jax") if m in sys.modules))
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        print(model.predict(np.ones((4, 3), "float32"), verbose=0).shape)
        import pandas, sklearn.datasets, jax  # imagegen's own imports (and MLflow's) are not hidden
        print(len(sklearn.datasets.load_digits().images), pandas.DataFrame({"a": [1]}).shape)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["[]", "(4, 2)", "1797 (1, 1)"]


def test_the_backend_is_read_without_importing_keras(tmp_path: Path) -> None:
    assert startup.keras_backend({"KERAS_BACKEND": "jax"}) == "jax"
    assert startup.keras_backend({"KERAS_HOME": str(tmp_path)}) == "tensorflow"  # no keras.json: the default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert startup.keras_backend({"KERAS_HOME": str(tmp_path)}) == "torch"
    (tmp_path / "keras.json").write_text("{not json")
    assert startup.keras_backend({"KERAS_HOME": str(tmp_path)}) == "tensorflow"


def test_nothing_is_hidden_when_keras_runs_on_jax() -> None:
    proc = run_python(
        """
        import sys
        from imagegen import startup
        print(startup.install(), any(isinstance(f, startup.HideFromBackend) for f in sys.meta_path))
        """,
        KERAS_BACKEND="jax",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False False"
