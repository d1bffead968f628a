"""Loss terms for a student matching a frozen teacher: the teacher's outputs as constants, MSE and softened KL.

Shared by the families' architecture-distillation students (each family module declares its own) and the
knowledge distillation of the feature classifier (:mod:`imagegen.distill.knowledge`).
"""

from __future__ import annotations

from typing import Any

from keras import ops


def frozen(x: Any) -> Any:
    """A teacher output as a constant for the student's gradients."""
    return ops.stop_gradient(ops.cast(x, "float32"))


def mse(a: Any, b: Any) -> Any:
    """Mean squared difference, in float32."""
    return ops.mean(ops.square(ops.cast(a, "float32") - ops.cast(b, "float32")))


def kd_loss(teacher_logits: Any, student_logits: Any, temperature: float) -> Any:
    """``T^2 * mean over the batch of KL(softmax(teacher/T) || softmax(student/T))`` (last axis: classes).

    Written with log-softmax on both sides, so it is exact and finite for any logits.
    """
    t = float(temperature)
    log_p_t = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
    log_p_s = ops.log_softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return t * t * ops.mean(kl)


def binary_logits(logit: Any) -> Any:
    """One real/fake logit ``l`` (shape (B, 1) or (B,)) as two-class logits ``[0, l]``: softmax gives
    ``[1 - sigmoid(l), sigmoid(l)]``, so :func:`kd_loss` on them is the Bernoulli KL."""
    logit = ops.reshape(ops.cast(logit, "float32"), (-1, 1))
    return ops.concatenate([ops.zeros_like(logit), logit], axis=-1)
