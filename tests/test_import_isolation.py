"""Training (and distillation) run where only Keras and a backend exist.

Nothing they import needs mlflow, prefect or dvc.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mlflow", "prefect", "dvc"):
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Block())
import imagegen.data.loader, imagegen.models.unet, imagegen.models.dcgan, imagegen.models.vae
import imagegen.training.loop, imagegen.training.families, imagegen.artifact
import imagegen.stages.train, imagegen.stages.sample, imagegen.stages.ingest, imagegen.cli
import imagegen.sampling, imagegen.distill, imagegen.distill.progressive, imagegen.distill.architecture
import imagegen.distill.cost, imagegen.distill.agreement, imagegen.distill.setup, imagegen.stages.distill
from imagegen.config import load_params
from imagegen.stages.ingest import run_ingest
from imagegen.stages.train import run_train
p = load_params(None, ["tracking.enabled=false", "data.image_size=8", "vae.steps=2", "vae.base_filters=4",
                       "train.batch_size=8", "train.jit_compile=false", f"data.processed_dir={sys.argv[1]}/d",
                       f"train.checkpoints_dir={sys.argv[1]}/c", f"train.reports_dir={sys.argv[1]}/r"])
run_train(p, "vae", data_dir=run_ingest(p), out_dir=sys.argv[1] + "/m", show_progress=False)
from imagegen.stages.distill import run_distill
q = load_params(None, ["tracking.enabled=false", "data.image_size=8", "vae.base_filters=4", "train.batch_size=8",
                       "train.jit_compile=false", f"data.processed_dir={sys.argv[1]}/d",
                       f"train.checkpoints_dir={sys.argv[1]}/c",
                       f"train.reports_dir={sys.argv[1]}/r", f"evaluate.features_dir={sys.argv[1]}/none",
                       "distill.architecture_steps=2", "distill.compare_n=4", "distill.speed_n=4"])
run_distill(q, sys.argv[1] + "/m", "architecture", out_dir=sys.argv[1] + "/s", show_progress=False)
print("trained without", sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "prefect", "dvc")))
"""


def test_training_imports_and_runs_with_mlflow_prefect_and_dvc_blocked(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("trained without []")


LIGHT_COMMANDS = """
import sys
from typer.testing import CliRunner
from imagegen.cli import app

runner = CliRunner()
for args in (["params"], ["--help"], ["train", "--help"], ["promote", "--help"],
             ["promote", "imagegen-ddpm-digits", "-S", "tracking.enabled=false"], ["params", "-S", "nosuch=1"]):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
# Bad input to the heavy stages is refused before TensorFlow starts: one line, exit 2, in a second.
for args, says in ((["train", "gan"], "family 'gan'"),
                   (["evaluate", "--out", "o", "--samples", "missing.npz"], "missing.npz: no such file"),
                   (["export", "--model", "nowhere"], "nowhere/model.json: no trained model here")):
    result = runner.invoke(app, [*args, "-S", "tracking.enabled=false"])
    assert result.exit_code == 2 and says in result.output, (args, result.exit_code, result.output)
print("heavy", sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "jax", "mlflow", "torch"}))
"""


def test_params_help_promote_and_their_errors_start_without_tensorflow_or_mlflow(tmp_path) -> None:
    """Commands that need no model, and bad input to train, evaluate and export, answer in a second or two:
    no TensorFlow, Keras, JAX or MLflow import."""
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_COMMANDS], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("heavy []")
