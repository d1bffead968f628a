"""What a distillation method hands the training loop, and helpers shared by the methods.

A distillation is an ordinary :class:`~imagegen.training.families.base.Family` to the
:class:`~imagegen.training.loop.Trainer`: its networks are the frozen teacher network(s) (used in the loss but
in no phase's ``trains``, so neither stepper updates them) plus the student's networks, and its one phase
trains the student. Checkpoints, resume, EMA and the progress bar therefore come for free on both backends.
The student also exists as a normal model family sharing the same network objects, which is what
:func:`imagegen.artifact.save_model` writes and ``imagegen sample``/``evaluate`` later rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from imagegen.config import Params
from imagegen.errors import ConfigError
from imagegen.training.families.base import Family

METHODS = ("progressive", "architecture", "knowledge")


@dataclass
class Distillation:
    """``family``: what the Trainer runs (teacher frozen, student trained); ``student``: the student as a model."""

    family: Family
    student: Family


def check_method(method: str, family: str | None, where: Any, section: Mapping[str, Any] | None = None) -> None:
    """Refuse, in one line and before any work, an unknown method or one the teacher's family does not declare
    (:meth:`~imagegen.training.families.spec.FamilySpec.refusal`: progressive distillation of anything but an
    unconditional or class-conditioned DDPM, architecture distillation of a family without a width key).

    ``where`` names the teacher in the message (its folder, or "the teacher's spec"); ``section`` is the teacher's
    family section (its model.json ``spec[family]``), which says what it is conditioned on.
    """
    if method not in METHODS:
        raise ConfigError(f"distill: method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "knowledge":
        return
    if family is None:
        raise ConfigError(
            f"--method {method} needs a trained generator teacher, but {where} holds no model family "
            "(a feature classifier? distil that with --method knowledge)"
        )
    from imagegen.training.families import FAMILIES, family_spec

    if family not in FAMILIES:
        raise ConfigError(f"--method {method}: {where} holds a {family!r} model; expected one of {', '.join(FAMILIES)}")
    refusal = family_spec(family).refusal(method, where, section or {})
    if refusal is not None:
        raise ConfigError(refusal)


def student_width(width: int, factor: float, multiple: int = 1) -> int:
    """``width * factor`` rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, int(round(width * factor / multiple)) * multiple)


def family_params(spec: Mapping[str, Any], **changes: Any) -> Params:
    """Params whose family section is the one recorded in a model's ``spec``, with ``changes`` applied to it."""
    name = spec["family"]
    return Params.model_validate({name: {**spec[name], **changes}})


def copy_network(source: keras.Model, dest: keras.Model) -> None:
    """Copy every weight (trainable and not) of ``source`` into ``dest`` of the same architecture."""
    dest.set_weights(source.get_weights())


def reset_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Return a built optimizer to the state it was built in: update count and every slot (Adam's moments) zero,
    the learning rate kept. Equal to a new optimizer of the same settings built on the same variables, without
    new variables, so a step function compiled against this one stays valid."""
    for variable in optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(keras.ops.zeros(variable.shape, dtype=variable.dtype))  # zeros_like fails on JAX


def evaluate_loss(family: Family, feed: Mapping[str, np.ndarray], phase: int = 0) -> dict[str, float]:
    """The metrics a phase's loss reports on ``feed``, computed in inference mode without updating anything.

    Used to measure a student on a fixed held-out batch before and after training.
    """

    def call(name: str, inputs: Any, training: bool = True) -> Any:
        return family.networks[name](inputs, training=False)

    batch = {k: keras.ops.convert_to_tensor(v) for k, v in feed.items()}
    _, metrics = family.phases[phase].loss(call, batch)
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in metrics.items()}
