"""Process start-up (imagegen.startup): TensorFlow/Keras do not import scikit-learn, pandas, JAX or matplotlib for
nothing, and everything else still can; TensorFlow runs its oneDNN kernels on every x86 CPU unless told otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagegen import startup


def run_python(code: str, drop: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, "KERAS_BACKEND": "tensorflow", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keras_on_tensorflow_starts_without_sklearn_pandas_jax_or_matplotlib_and_they_still_import_elsewhere() -> None:
    proc = run_python(
        """
        import sys
        from imagegen import startup
        assert startup.install()
        import keras, numpy as np
        import tensorflow as tf
        print(sorted(m for m in ("sklearn", "pandas", "jax", "matplotlib") if m in sys.modules))
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        print(model.predict(np.ones((4, 3), "float32"), verbose=0).shape)
        import pandas, sklearn.datasets, jax, matplotlib  # imagegen's own imports (and MLflow's) are not hidden
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


def test_tensorflow_defaults_fill_only_what_the_environment_lacks() -> None:
    env: dict[str, str] = {}
    expected = startup.tensorflow_defaults()
    assert set(expected) == {"TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS"}
    assert startup.set_tensorflow_defaults(env) == expected
    assert env == expected
    mine = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "2"}  # a user's choices are kept
    assert startup.set_tensorflow_defaults(mine) == {}
    assert mine == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "2"}


@pytest.mark.parametrize(("cores", "intra"), [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4)])
def test_each_of_up_to_four_branches_gets_an_equal_share_of_the_cores(cores: int, intra: int) -> None:
    assert startup.tensorflow_defaults(cores)["TF_NUM_INTRAOP_THREADS"] == str(intra)


def test_the_console_script_runs_tensorflow_on_onednn_kernels_and_respects_an_explicit_choice() -> None:
    # TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI/BF16, AVX_VNNI or AMX; the command does on all.
    code = """
        import os
        from imagegen import cli
        def probe():  # in place of the Typer app: what a stage importing TensorFlow after main()'s set-up sees
            from tensorflow.python.util import _pywrap_util_port as port
            print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), port.IsMklEnabled())
        cli.app = probe
        cli.main()
        """
    default = run_python(code, drop=("TF_ENABLE_ONEDNN_OPTS",))
    assert default.returncode == 0, default.stderr[-2000:]
    assert default.stdout.strip().splitlines()[-1] == "1 True"
    explicit = run_python(code, TF_ENABLE_ONEDNN_OPTS="0")
    assert explicit.returncode == 0, explicit.stderr[-2000:]
    assert explicit.stdout.strip().splitlines()[-1] == "0 False"
