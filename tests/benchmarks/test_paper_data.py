"""The paper benchmark's data pipeline (§4.1) on the real MNIST / Fashion-MNIST files."""

from pathlib import Path

import pytest
import torch

from benchmarks.paper import data as D
from benchmarks.paper.train import make_group

ROOT = D.default_data_root()  # .ci/run sets TORCHINVARIANCE_DATA=../shared/data


@pytest.fixture(scope="module")
def rot():
    return D.build("mnist", make_group("rotation"), ROOT, sizes=(3000, 2000, 500))


def test_split_sizes_classes_and_padding(rot):
    assert (len(rot.train), len(rot.test), len(rot.val)) == (3000, 2000, 500)
    assert rot.train.x.shape[1:] == (1, 36, 36)
    for split in (rot.train, rot.val, rot.test):
        assert set(split.y.unique().tolist()) == set(range(9))  # digit 9 dropped
    # padding: the 4-pixel border is the normalized zero everywhere in the untransformed train split
    border = rot.train.x[..., :4, :]
    torch.testing.assert_close(border, torch.full_like(border, -rot.mean / rot.std))


def test_normalized_with_train_statistics(rot):
    assert abs(rot.train.x.mean().item()) < 1e-5
    assert abs(rot.train.x.std().item() - 1.0) < 1e-4


def test_splits_are_disjoint_and_deterministic():
    tr, te, va = D.split_indices(63_000, (10_000, 50_000, 2_000))
    assert len(set(tr.tolist()) | set(te.tolist()) | set(va.tolist())) == 62_000
    tr2, _, _ = D.split_indices(63_000, (10_000, 50_000, 2_000))
    assert torch.equal(tr, tr2)
    with pytest.raises(ValueError, match="need 70000 samples"):
        D.split_indices(100, (50_000, 20_000, 0))


def test_fixed_test_transforms_are_uniform_and_applied(rot):
    counts = torch.bincount(rot.test.elements, minlength=4)
    assert counts.min() > 400  # 2000 samples over 4 rotations
    again = D.build("mnist", make_group("rotation"), ROOT, sizes=(3000, 2000, 500))
    assert torch.equal(again.test.elements, rot.test.elements) and torch.equal(again.test.x, rot.test.x)
    untransformed = (D.pad_and_scale(rot.raw_test_images) - rot.mean) / rot.std
    g = rot.group
    for i in range(20):
        assert torch.equal(rot.test.x[i], g.act(int(rot.test.elements[i]), untransformed[i]))


def test_epoch_draws_redraw_and_cover_the_group():
    gen = torch.Generator().manual_seed(0)
    perm, els = D.epoch_draws(1000, 4, gen)
    assert sorted(perm.tolist()) == list(range(1000))  # a permutation of the training samples
    assert els.shape == (1000,) and set(els.tolist()) == {0, 1, 2, 3}
    perm2, els2 = D.epoch_draws(1000, 4, gen)  # the next epoch draws anew
    assert not torch.equal(perm, perm2) and not torch.equal(els, els2)
    again = D.epoch_draws(1000, 4, torch.Generator().manual_seed(0))  # the same seed, the same draws
    assert torch.equal(again[0], perm) and torch.equal(again[1], els)


def test_drift_endpoints(rot):
    images, labels = D.load_raw("fmnist", ROOT)
    keep = labels != 9
    images, labels = images[keep], labels[keep]
    d0 = D.drifted_test(rot, images, labels, 0.0, n=300)
    assert torch.equal(d0.x, rot.test.x[:300]) and torch.equal(d0.y, rot.test.y[:300])
    d1 = D.drifted_test(rot, images, labels, 1.0, n=300)
    # at beta = 1 every image is a Fashion-MNIST image of the same class index
    g = rot.group
    for i in range(10):
        back = g.act(g.inverse(int(d1.elements[i])), d1.x[i]) * rot.std + rot.mean
        raw = (back[0, 4:32, 4:32] * 255).round().to(torch.uint8)
        matches = (images == raw).flatten(1).all(1).nonzero().squeeze(1)
        assert len(matches) >= 1 and labels[matches[0]] == d1.y[i]
    with pytest.raises(ValueError, match="beta"):
        D.drifted_test(rot, images, labels, 1.5)


def test_missing_data_offline_says_where(tmp_path: Path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(D.DataUnavailableError, match=r"MNIST/raw/.*--data-root"):
        D.load_raw("mnist", tmp_path)


def _mnist_copy(tmp_path: Path) -> Path:
    """A data root whose MNIST raw files link to the real ones (no copy of the 47 MB images)."""
    src = (D.default_data_root() / "MNIST" / "raw").resolve()  # a relative $TORCHINVARIANCE_DATA too
    if not all((src / f).exists() for f in D.RAW_FILES):
        pytest.skip("the MNIST raw files are not available")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in D.RAW_FILES:
        (raw / f).symlink_to(src / f)
    return raw


def test_corrupt_idx_file_is_named(tmp_path: Path):
    """Issue 11 item 14: a truncated file is reported as corrupt, by name, not as 'could not download'."""
    raw = _mnist_copy(tmp_path)
    good = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(good[:-10])
    with pytest.raises(D.DataUnavailableError, match=r"t10k-labels-idx1-ubyte is corrupt: .*10000.*9998 bytes"):
        D.load_raw("mnist", tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + good[4:])  # float type code
    with pytest.raises(D.DataUnavailableError, match="not an IDX header of unsigned bytes"):
        D.load_raw("mnist", tmp_path)


def test_bad_label_value_fails_with_file_and_value(tmp_path: Path):
    raw = _mnist_copy(tmp_path)
    good = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    good[8 + 123] = 12  # label 12 in a 10-class file
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(good))
    with pytest.raises(D.DataUnavailableError, match=r"t10k-labels-idx1-ubyte holds label 12, outside the 10 classes"):
        D.load_raw("mnist", tmp_path)
