"""BatchStream: seeded, shuffled batches in [-1, 1] whose position can be saved and restored exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagegen.data.loader import BatchStream, to_uint8, to_unit_range
from imagegen.data.processed import Dataset, Split, write_processed

N = 10


@pytest.fixture
def split() -> Split:
    """Image i is filled with the value 20*i, so a batch reveals which indices it holds."""
    images = np.empty((N, 4, 5, 3), dtype=np.uint8)
    for i in range(N):
        images[i] = 20 * i
    return Split(images, (np.arange(N) % 3).astype(np.int64))


def indices_of(batch) -> list[int]:
    values = to_uint8(batch.images)[:, 0, 0, 0].astype(int)
    return (values // 20).tolist()


def take(stream: BatchStream, k: int) -> list:
    return [next(stream) for _ in range(k)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_batches_have_shape_dtype_and_range(split):
    batch = next(BatchStream(split, batch_size=4, seed=0))
    assert batch.images.shape == (4, 4, 5, 3)
    assert batch.images.dtype == np.float32
    assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
    assert batch.labels.shape == (4,) and batch.labels.dtype == np.int32


def test_labels_stay_with_their_images(split):
    for batch in take(BatchStream(split, batch_size=3, seed=7), 8):
        np.testing.assert_array_equal(batch.labels, np.array(indices_of(batch)) % 3)


def test_extreme_pixels_map_to_minus_one_and_one():
    images = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1)
    batch = next(BatchStream(Split(images, np.zeros(2, np.int64)), batch_size=2, seed=0))
    assert sorted(batch.images.ravel().tolist()) == [-1.0, 1.0]


def test_same_seed_same_sequence_other_seed_other_order(split):
    a = take(BatchStream(split, batch_size=3, seed=1), 7)
    b = take(BatchStream(split, batch_size=3, seed=1), 7)
    assert_same_batches(a, b)
    c = take(BatchStream(split, batch_size=3, seed=2), 7)
    assert [indices_of(x) for x in a] != [indices_of(x) for x in c]


@pytest.mark.parametrize("batch_size", [1, 3, 5, 10, 4])
def test_each_epoch_visits_every_index_exactly_once(split, batch_size):
    stream = BatchStream(split, batch_size=batch_size, seed=3)
    drawn = [i for batch in take(stream, (3 * N) // batch_size + 1) for i in indices_of(batch)]
    for epoch in range(3):
        assert sorted(drawn[epoch * N : (epoch + 1) * N]) == list(range(N)), f"epoch {epoch}"
    assert drawn[:N] != drawn[N : 2 * N]  # reshuffled each epoch


def test_restore_mid_epoch_continues_like_an_uninterrupted_stream(split):
    uninterrupted = take(BatchStream(split, batch_size=3, seed=11), 9)

    first = BatchStream(split, batch_size=3, seed=11)
    take(first, 2)  # position 6 of 10: mid-epoch
    state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
    assert state == {"seed": 11, "epoch": 0, "position": 6, "batch_size": 3}

    resumed = BatchStream(split, batch_size=3, seed=999)  # the seed comes from the state
    resumed.restore(state)
    assert_same_batches(take(resumed, 7), uninterrupted[2:])


def test_restore_at_an_epoch_boundary(split):
    uninterrupted = take(BatchStream(split, batch_size=5, seed=4), 6)
    first = BatchStream(split, batch_size=5, seed=4)
    take(first, 2)
    assert first.state()["epoch"] == 1 and first.state()["position"] == 0
    resumed = BatchStream(split, batch_size=5, seed=4)
    resumed.restore(first.state())
    assert_same_batches(take(resumed, 4), uninterrupted[2:])


def test_uint8_round_trip_is_exact():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    unit = to_unit_range(x)
    assert unit.dtype == np.float32
    assert unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_array_equal(to_uint8(unit), x)


def test_to_uint8_clips_out_of_range_values():
    np.testing.assert_array_equal(to_uint8(np.array([-3.0, 0.0, 3.0])), [0, 128, 255])


def test_bad_batch_size_and_empty_split_are_refused(split):
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(split, batch_size=0, seed=0)
    empty = Split(np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        BatchStream(empty, batch_size=2, seed=0)


def test_from_processed_reads_the_written_split(tmp_path, split):
    ds = Dataset("toy", {"train": split, "test": split}, ["a", "b", "c"], source="test")
    write_processed(ds, tmp_path / "toy")
    from_disk = take(BatchStream.from_processed(tmp_path / "toy", batch_size=4, seed=5), 4)
    assert_same_batches(from_disk, take(BatchStream(split, batch_size=4, seed=5), 4))


def test_tf_dataset_yields_the_stream_batches(split):
    pytest.importorskip("tensorflow")
    from imagegen.data.loader import tf_dataset

    expected = take(BatchStream(split, batch_size=4, seed=8), 2)
    dataset = tf_dataset(BatchStream(split, batch_size=4, seed=8))
    assert dataset.element_spec[0].shape.as_list() == [4, 4, 5, 3]
    got = [(images.numpy(), labels.numpy()) for images, labels in dataset.take(2)]
    for (images, labels), batch in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images, batch.images)
        np.testing.assert_array_equal(labels, batch.labels)
