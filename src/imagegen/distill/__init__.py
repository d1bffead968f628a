"""Teacher-student distillation: a student that samples in fewer steps or with a narrower network.

* :mod:`imagegen.distill.progressive`: progressive distillation of a DDPM (Salimans & Ho 2022): each round's
  student learns to take one DDIM step where its teacher takes two, halving the sampling steps.
* :mod:`imagegen.distill.architecture`: a student of ``distill.width_factor`` times the teacher's width trained
  to match the teacher's outputs on the same inputs (the families declaring a width key: DDPM, DCGAN, VAE).
* :mod:`imagegen.distill.setup`: what both give the training loop (a :class:`Distillation`: the family the
  :class:`~imagegen.training.loop.Trainer` runs, plus the student as a normal model family).
* :mod:`imagegen.distill.runner`: a whole distillation: the progressive round loop (or the
  architecture run), each student measured beside its teacher, resume and cleanup.
* :mod:`imagegen.distill.cost`: parameters, multiply-accumulates and sampling speed of a model.
* :mod:`imagegen.distill.agreement`: student vs teacher on the same noise (SSIM/PSNR) and side-by-side grids.
* :mod:`imagegen.distill.side_by_side`: teacher and students sampled on the same noise and measured alike.

Which methods a teacher takes is its family's declaration (``FamilySpec.refusal``), checked before any work.

Nothing here imports mlflow, prefect or dvc: tracking reaches the runner as a callable that opens a
child run; ``imagegen.stages.distill`` adds it and writes the report.
"""

from __future__ import annotations

from imagegen.distill.setup import METHODS, Distillation, check_method

__all__ = ["METHODS", "Distillation", "check_method"]
