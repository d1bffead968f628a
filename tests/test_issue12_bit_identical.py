"""TEMPORARY (issue 12): the refactored sampler, export graph and distillation target against the
previous implementation (copied to tests/legacy_issue12/) on the same seeds. Removed with that copy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from imagegen.artifact import LoadedModel
from imagegen.config import DistillConfig, load_params
from imagegen.export import graph as new_graph
from imagegen.models import diffusion as new_d
from imagegen.training.families import build_family
from imagegen.training.families import ddpm as new_ddpm
from tests.legacy_issue12 import diffusion as old_d
from tests.legacy_issue12 import graph as old_graph
from tests.legacy_issue12 import ddpm as old_ddpm

T = 50
SHAPE = (3, 8, 8, 1)


def family(conditional: bool):
    params = load_params(None, [
        "tracking.enabled=false", "ddpm.base_channels=8", "ddpm.groups=4", f"ddpm.timesteps={T}",
        f"ddpm.conditional={str(conditional).lower()}", "ddpm.attention_resolutions=[4]",
    ])
    fam = build_family("ddpm", params, (8, 8, 1), 10)
    rng = np.random.default_rng(1)
    for name in ("unet", "unet_ema"):
        net = fam.networks[name]
        net.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in net.get_weights()])
    return fam


def linear_eps_fn(x_t, t):
    return 0.3 * x_t + 0.01 * ops.reshape(ops.cast(t, "float32"), (-1, 1, 1, 1))


@pytest.mark.parametrize(
    "kw",
    [
        {"steps": 5}, {"steps": 5, "clip_x0": True}, {"steps": 7, "eta": 0.6},
        {"steps": 7, "eta": 1.0, "clip_x0": True}, {"timesteps": [47, 30, 12, 3], "clip_x0": True},
        {"steps": 1}, {"steps": T, "eta": 0.3},
    ],
)
def test_ddim_sample_is_bit_identical(kw) -> None:
    s_old = old_d.make_schedule("linear", T, 1e-4, 0.2)
    s_new = new_d.make_schedule("linear", T, 1e-4, 0.2)
    a = ops.convert_to_numpy(old_d.ddim_sample(linear_eps_fn, s_old, SHAPE, np.random.default_rng(3), **kw))
    b = ops.convert_to_numpy(new_d.ddim_sample(linear_eps_fn, s_new, SHAPE, np.random.default_rng(3), **kw))
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def families():
    return {False: family(False), True: family(True)}


@pytest.mark.parametrize(
    ("conditional", "kw"),
    [
        (False, {"steps": 5}), (False, {"steps": 5, "clip_x0": False}), (False, {"steps": 6, "eta": 0.5}),
        (False, {"timesteps": [49, 33, 20, 4]}), (False, {"sampler": "ddpm"}),
        (False, {"sampler": "ddpm", "clip_x0": False}),
        (True, {"steps": 4, "guidance_scale": 1.0}), (True, {"steps": 4, "guidance_scale": 3.0}),
        (True, {"steps": 4, "guidance_scale": 0.0}), (True, {"steps": 4, "guidance_scale": 2.0, "eta": 0.4}),
    ],
)
def test_generate_is_bit_identical(families, conditional, kw) -> None:
    fam = families[conditional]
    labels = np.array([3, 7, 1], np.int32) if conditional else None
    a = old_ddpm.generate(fam, 3, np.random.default_rng(5), labels=labels, **kw)
    b = new_ddpm.generate(fam, 3, np.random.default_rng(5), labels=labels, **kw)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("conditional", "clip_x0", "scale", "grid"),
    [(False, True, 1.0, None), (False, False, 1.0, None), (False, True, 1.0, [49, 37, 12]),
     (True, True, 3.0, None), (True, True, 1.0, None), (True, False, 2.0, [49, 20])],
)
def test_export_graph_is_bit_identical(families, monkeypatch, conditional, clip_x0, scale, grid) -> None:
    fam = families[conditional]
    meta = {"sampling": {"timesteps": grid}} if grid else {}
    loaded = LoadedModel(path=None, meta=meta, family=fam)  # type: ignore[arg-type]
    for module in (old_graph, new_graph):
        monkeypatch.setattr(module, "to_uint8_images", lambda x: x)  # compare the floats, not uint8
    x_T = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    inputs = {"x_T": tf.constant(x_T)}
    if conditional:
        inputs["label"] = tf.constant(np.array([2, 5, 9], np.int32))
    outs = []
    for module in (old_graph, new_graph):
        serving = module.build_serving(loaded, ddpm_steps=3, clip_x0=clip_x0, guidance_scale=scale)
        outs.append(tf.function(serving.fn)(**inputs)["images"].numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_progressive_target_matches_to_float32_rounding(families) -> None:
    from imagegen.distill import progressive as new_p
    from tests.legacy_issue12 import progressive as old_p

    fam = families[False]
    teacher = fam.networks["unet_ema"]
    grid = new_d.ddim_timesteps(T, 4)
    cfg = DistillConfig(start_steps=4, target_steps=1)
    old = old_p.build_progressive(teacher, fam.spec, grid, cfg, clip_x0=True)
    new = new_p.build_progressive(teacher, fam.spec, grid, cfg, clip_x0=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    labels = np.zeros(16, np.int64)
    from imagegen.distill.setup import evaluate_loss

    lo = evaluate_loss(old.family, {"images": images, "labels": labels,
                                    **old.family.noise(np.random.default_rng(2), labels)})
    ln = evaluate_loss(new.family, {"images": images, "labels": labels,
                                    **new.family.noise(np.random.default_rng(2), labels)})
    print("progressive loss old/new", lo, ln)
    assert ln["loss"] == pytest.approx(lo["loss"], rel=1e-4)
