import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import make_dataset, tiny_config
from segdiff.config import AugmentConfig
from segdiff.data.dataset import TrainBatches, load_pair, make_splits
from segdiff.data.folder import pair_split
from segdiff.data.io import read_image, read_mask
from segdiff.data.transforms import augment
from segdiff.errors import DataError
from segdiff.rng import generator


def test_image_formats(tmp_path):
    rgb = (np.random.default_rng(0).random((5, 7, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 7), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpg", quality=100)
    tifffile.imwrite(tmp_path / "16.tif", (rgb.astype(np.uint16) * 257))
    a = read_image(tmp_path / "a.png")
    assert a.shape == (5, 7, 3) and a.dtype == np.float32
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), a)
    np.testing.assert_allclose(read_image(tmp_path / "16.tif"), a, atol=1e-6)
    g = read_image(tmp_path / "gray.jpg")
    assert g.shape == (5, 7, 3) and np.allclose(g[..., 0], g[..., 2])


def test_masks_any_two_values_and_errors(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    Image.fromarray(m).save(tmp_path / "m01.png")
    Image.fromarray(m * 255).save(tmp_path / "m255.png")
    Image.fromarray(m * 3 + 10).save(tmp_path / "m1013.png")
    for name in ("m01.png", "m255.png", "m1013.png"):
        assert read_mask(tmp_path / name).sum() == 4
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    assert read_mask(tmp_path / "empty.png").sum() == 0
    bad = m.copy()
    bad[0, 0] = 2
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png.*not binary"):
        read_mask(tmp_path / "bad.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: cannot read"):
        read_mask(tmp_path / "broken.png")


def test_pairing_errors(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("train", 3),))
    (root / "train" / "masks" / "img01.png").unlink()
    with pytest.raises(DataError, match=r"img01\.png: no mask with stem 'img01'"):
        pair_split(root / "train")
    root2 = make_dataset(tmp_path / "e", splits=(("train", 2),))
    (root2 / "train" / "masks" / "extra.png").write_bytes((root2 / "train" / "masks" / "img00.png").read_bytes())
    with pytest.raises(DataError, match=r"extra\.png: no image"):
        pair_split(root2 / "train")
    (tmp_path / "f" / "train" / "images").mkdir(parents=True)
    (tmp_path / "f" / "train" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        pair_split(tmp_path / "f" / "train")


def test_size_mismatch_names_both_files(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("train", 1),))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / "masks" / "img00.png")
    with pytest.raises(DataError, match=r"masks/img00\.png: mask is 8x8 but image img00\.png is 16x16"):
        load_pair(pair_split(root / "train")[0])


def test_val_split_is_seeded_and_disjoint(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("train", 10),))
    a, b = make_splits(root, 0.2, seed=3), make_splits(root, 0.2, seed=3)
    assert [s.stem for s in a.val] == [s.stem for s in b.val] and len(a.val) == 2
    assert not {s.stem for s in a.val} & {s.stem for s in a.train}
    assert len(a.train) + len(a.val) == 10 and "seed 3" in a.val_source
    c = make_splits(root, 0.2, seed=4)
    assert [s.stem for s in c.val] != [s.stem for s in a.val] or True  # other seeds may coincide
    root2 = make_dataset(tmp_path / "e", splits=(("train", 4), ("val", 2)))
    assert make_splits(root2, 0.5, 0).val_source == "val folder"


def test_augmentation_is_joint_keyed_and_keeps_masks_binary():
    image = torch.zeros(3, 24, 24)
    mask = torch.zeros(1, 24, 24)
    mask[:, 4:12, 6:18] = 1
    image[:, 4:12, 6:18] = 1  # image equals mask: the geometric part must move them together
    cfg = AugmentConfig(scale=(0.75, 1.5), rotate=180, hflip=True, vflip=True)
    for i in range(5):
        im1, m1 = augment(image, mask, cfg, (16, 16), generator(0, i))
        im2, m2 = augment(image, mask, cfg, (16, 16), generator(0, i))
        assert torch.equal(im1, im2) and torch.equal(m1, m2)
        assert set(m1.unique().tolist()) <= {0.0, 1.0}
        assert ((im1[0] > 0.5).float() != m1[0]).float().mean() < 0.05
    jit = AugmentConfig(brightness=0.6, contrast=0.5, saturation=0.4, hue=0.025)
    im, m = augment(torch.rand(3, 8, 8), mask[:, :8, :8], jit, (8, 8), generator(1))
    assert im.min() >= 0 and im.max() <= 1 and torch.equal(m, mask[:, :8, :8])


def test_batches_depend_only_on_step_and_index(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("train", 5),))
    b = TrainBatches(pair_split(root / "train"), tiny_config().data, T=10, seed=0)
    full = b.batch(3, 4)
    half = b.batch(3, 4, start=2, stop=4)
    for x, y in zip(full, half):
        assert torch.equal(x[2:], y)
    # each image once per epoch
    assert sorted(b.index(i) for i in range(5)) == list(range(5))
    image, x0, t, eps = full
    assert image.shape == (4, 3, 16, 16) and set(x0.unique().tolist()) <= {-1.0, 1.0}
    assert t.min() >= 0 and t.max() < 10
