"""The compiled predictor the samplers call, and the sampler timing that distillation reports reuse."""

from __future__ import annotations

import numpy as np

from imagegen.config import DDPMConfig
from imagegen.distill.cost import TimedSampler
from imagegen.models.unet import build_unet
from imagegen.training.predict import compiled_predictor, pad_small_batches


def tiny_unet():
    cfg = DDPMConfig(base_channels=8, channel_mults=[1, 2], groups=4, timesteps=50)
    return build_unet(cfg, 8, 1, 10)


def test_a_ragged_last_batch_gives_the_rows_an_unpadded_call_gives() -> None:
    net = tiny_unet()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 1)).astype("float32")
    t = rng.integers(0, 50, 16).astype("float32")
    predict = compiled_predictor(net)
    full = np.asarray(predict(x, t))
    ragged = np.asarray(predict(x[:13], t[:13]))  # padded to 16 rows, 3 dropped again
    assert ragged.shape == (13, 8, 8, 1)
    np.testing.assert_allclose(ragged, full[:13], rtol=1e-5, atol=1e-5)
    alone = np.asarray(net([x[:13], t[:13]], training=False))  # the network itself, no padding, no XLA
    np.testing.assert_allclose(ragged, alone, rtol=1e-4, atol=1e-4)


def test_only_batches_a_little_smaller_than_the_largest_so_far_are_padded() -> None:
    seen: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x * 2

    predict = pad_small_batches(fn)
    for batch in (256, 232, 256, 128, 300, 240):
        out = np.asarray(predict(np.ones((batch, 3), dtype="float32")))
        assert out.shape == (batch, 3) and (out == 2).all()
    # 232 runs as 256; 128 (half) runs as it is; 240 is > 0.75 x 300, so it runs as 300
    assert seen == [256, 256, 256, 128, 300, 300]


def test_timed_sampler_reports_the_best_full_batch_after_the_first_call() -> None:
    calls: list[int] = []

    def sample(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
        calls.append(n)
        return np.zeros((n, 2, 2, 1), dtype="float32")

    timed = TimedSampler(sample)
    assert timed.images_per_second() is None
    timed(8, np.random.default_rng(0))
    timed(3, np.random.default_rng(0))
    assert timed.images_per_second() is None  # the first call compiles; a ragged one is not a full batch
    timed(8, np.random.default_rng(0))
    rate = timed.images_per_second()
    assert rate is not None and rate > 0
    assert calls == [8, 3, 8]
