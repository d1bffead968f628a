"""Architecture distillation: a narrower student trained to reproduce the teacher's outputs on the same inputs.

The student has the teacher's architecture with ``distill.width_factor`` of its width (parameters fall roughly
with the square of the width). What that means for a family is its own declaration
(:class:`~imagegen.training.families.spec.FamilySpec`): the section key scaled (``width_key``, rounded to a
multiple of ``width_multiple_key``'s value when it declares one: a DDPM's GroupNorm ``groups``), the networks the
student trains and the loss that matches it to the teacher (``architecture_student``; see each family module).
A family that declares no width key is refused before any work (:func:`imagegen.distill.setup.check_method`).

The student is built from scratch (its shapes differ from the teacher's) as a normal model family, so it is
saved, sampled and evaluated like any trained model. Teachers are called in inference mode (BatchNorm moving
statistics, no dropout), as when they sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from imagegen.config import DistillConfig
from imagegen.distill.setup import Distillation, check_method, family_params, student_width
from imagegen.training.families import build_family, family_spec
from imagegen.training.families.base import Family, Phase

METHOD = "architecture"


def student_spec(spec: Mapping[str, Any], width_factor: float) -> dict[str, Any]:
    """The family section of the student: the teacher's (``spec[family]``) with the declared width scaled."""
    name = spec.get("family")
    check_method(METHOD, name, "the teacher's spec", spec.get(name) if isinstance(name, str) else None)
    declared = family_spec(name)
    section = dict(spec[name])
    key = declared.width_key
    multiple = int(section[declared.width_multiple_key]) if declared.width_multiple_key else 1
    section[key] = student_width(int(section[key]), width_factor, multiple)
    return section


def build_architecture(
    teacher: Family,
    cfg: DistillConfig,
    features: keras.Model | None = None,
    name: str = "architecture",
) -> Distillation:
    """A student of ``cfg.width_factor`` times ``teacher``'s width and the family that trains it to match.

    ``teacher`` is the loaded teacher family (its spec says what it is); ``features`` (families whose student
    declares the ``feature_weight`` option, optional) maps images in [-1, 1] to the evaluation features used by the
    feature-matching term.
    """
    spec = teacher.spec
    family_name = spec.get("family")
    section = student_spec(spec, cfg.width_factor)
    declared = family_spec(family_name)
    params = family_params({**spec, family_name: section})
    image_shape = tuple(spec["image_shape"])
    num_classes = int(spec["num_classes"])
    student = build_family(family_name, params, image_shape, num_classes)
    teachers, loss, noise, ema = declared.architecture_student(teacher, student, params, cfg, features)
    family = Family(
        name=name,
        networks={**teachers, **student.networks},
        phases=[
            Phase(
                "student",
                declared.student_trains,
                loss,
                keras.optimizers.Adam(cfg.architecture_learning_rate, global_clipnorm=1.0),
            )
        ],
        noise=noise,
        ema=ema,
        ema_decay=cfg.ema_decay,
        spec={
            **student.spec,
            "distill": {
                "method": METHOD,
                "width_factor": cfg.width_factor,
                "feature_weight": cfg.feature_weight,
                "feature_matching": features is not None,
                "discriminator_weight": (
                    cfg.discriminator_weight if "discriminator_weight" in declared.student_options else 0.0
                ),
            },
        },
    )
    return Distillation(family=family, student=student)
