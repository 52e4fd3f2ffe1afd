"""ssl_core.data: the dataset registry, offline Fashion-MNIST, safe paths, conversions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_core import data as D
from ssl_core import specs
from ssl_core.errors import DatasetError
from tests.support.services import unavailable

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty data root for every test; no downloads."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(root))
    monkeypatch.delenv("PRETEXTLAB_ALLOWED_DATA_ROOTS", raising=False)
    monkeypatch.delenv("PRETEXTLAB_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("PRETEXTLAB_FASHION_MNIST_SOURCE", raising=False)
    D.clear_cache()
    yield root
    D.clear_cache()


def need_debian_fashion() -> None:
    if not all((DEBIAN / f"{f}.gz").is_file() for f in D.FASHION_FILES):
        msg = "Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"
        unavailable(msg)


def test_registry_covers_every_spec_dataset() -> None:
    assert set(D.DATASET_LOADERS) == set(specs.DATASETS)


# ---------------------------------------------------------------------------
def test_fashion_mnist_prepare_copies_debian_files_and_loads(data_env: Path) -> None:
    need_debian_fashion()
    raw = D.prepare("fashion_mnist")
    assert raw == data_env / "FashionMNIST" / "raw"
    for f in D.FASHION_FILES:
        assert (raw / f).is_file() and (raw / f"{f}.gz").is_file()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    assert D.prepare("fashion_mnist") == raw  # idempotent
    train = D.load_dataset("fashion_mnist", "train")
    test = D.load_dataset("fashion_mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (60000,)
    assert set(train.labels.unique().tolist()) == set(range(10)) and train.num_classes == 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.float().div(255).mean().item()
    assert abs(mean - specs.DATASETS["fashion_mnist"].mean[0]) < 1e-3


def test_fashion_mnist_loader_prepares_by_itself(data_env: Path) -> None:
    need_debian_fashion()
    ds = D.load_dataset("fashion_mnist", "test", subset=50, seed=1)
    assert ds.images.shape == (50, 1, 28, 28)
    assert (data_env / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_fashion_mnist_gz_files_placed_by_hand_are_decompressed(data_env: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    need_debian_fashion()
    raw = data_env / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte",
              "train-labels-idx1-ubyte"):
        (raw / f"{f}.gz").write_bytes((DEBIAN / f"{f}.gz").read_bytes())
    monkeypatch.setenv("PRETEXTLAB_FASHION_MNIST_SOURCE", str(tmp_path / "nowhere"))
    assert len(D.load_dataset("fashion_mnist", "test")) == 10000


def test_unwritable_data_root_is_a_dataset_error(data_env: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "debian"
    src.mkdir()
    for f in D.FASHION_FILES:
        (src / f"{f}.gz").write_bytes(b"")
    monkeypatch.setenv("PRETEXTLAB_FASHION_MNIST_SOURCE", str(src))
    (data_env / "FashionMNIST").write_text("a file where the folder should be")
    with pytest.raises(DatasetError, match="cannot copy"):
        D.prepare("fashion_mnist")


def test_missing_fashion_mnist_names_dataset_paths_and_fixes(data_env: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = tmp_path / "no-debian-here"
    monkeypatch.setenv("PRETEXTLAB_FASHION_MNIST_SOURCE", str(nowhere))
    with pytest.raises(DatasetError) as e:
        D.load_dataset("fashion_mnist", "train")
    msg = str(e.value)
    assert "fashion_mnist" in msg
    assert str(data_env / "FashionMNIST" / "raw") in msg and str(nowhere) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "pretextlab data prepare fashion_mnist" in msg
    assert "PRETEXTLAB_ALLOW_DOWNLOAD" in msg


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary")])
def test_missing_archives_say_where_to_put_them(name: str, folder: str, data_env: Path) -> None:
    split = specs.DATASETS[name].pretrain_split
    with pytest.raises(DatasetError) as e:
        D.load_dataset(name, split)
    msg = str(e.value)
    assert name in msg and str(data_env / folder) in msg and "PRETEXTLAB_ALLOW_DOWNLOAD=1" in msg


# ---------------------------------------------------------------------------
def test_digits_split_and_scaling() -> None:
    train = D.load_dataset("digits", "train")
    test = D.load_dataset("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.labels.dtype == torch.int64 and set(test.labels.tolist()) == set(range(10))
    # disjoint: no test image equals a train image with the same label more than by chance
    again = D.load_dataset("digits", "train")
    assert torch.equal(again.images, train.images)
    assert abs(train.images.float().div(255).mean().item() - specs.DATASETS["digits"].mean[0]) < 0.01


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, ya = D.make_synthetic(64, seed=3)
    b, yb = D.make_synthetic(64, seed=3)
    c, _ = D.make_synthetic(64, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    train = D.load_dataset("synthetic", "train")
    test = D.load_dataset("synthetic", "test")
    assert train.images.shape == (2000, 3, 32, 32) and test.images.shape == (500, 3, 32, 32)
    assert train.num_classes == 4 and torch.bincount(train.labels).min() > 400
    assert not torch.equal(train.images[:500], test.images)


def test_synthetic_is_learnable() -> None:
    """A tiny CNN trained for a few hundred images' worth of steps beats chance (25%) clearly."""
    torch.manual_seed(0)
    train = D.load_dataset("synthetic", "train", subset=800)
    test = D.load_dataset("synthetic", "test", subset=200)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(12, 24, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(24, 4),
    )
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = train.images.float() / 255, train.labels
    for _ in range(3):
        for i in range(0, len(x), 50):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.5


# ---------------------------------------------------------------------------
def write_folder(root: Path, classes: dict[str, int], side: int = 10, gray: bool = False) -> None:
    g = torch.Generator().manual_seed(0)
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = torch.full((1 if gray else 3, side, side + 2), 40 * (k + 1), dtype=torch.uint8)
            img[:, :2] = torch.randint(0, 255, (1, 2, side + 2), generator=g, dtype=torch.uint8)
            arr = img.permute(1, 2, 0).numpy()
            Image.fromarray(arr[..., 0] if gray else arr).save(root / name / f"{i}.png")


def test_image_folder_with_class_subfolders(data_env: Path) -> None:
    write_folder(data_env / "pets", {"cat": 4, "dog": 6})
    ds = D.load_dataset("image_folder", "all", path="pets", image_size=8)
    assert ds.images.shape == (10, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 2 and ds.labels.tolist() == [0] * 4 + [1] * 6
    # the class colour survives decode + resize: cat 40, dog 80 in the centre
    assert abs(int(ds.images[0, 0, 6, 4]) - 40) <= 2 and abs(int(ds.images[-1, 0, 6, 4]) - 80) <= 2
    train = D.load_dataset("image_folder", "train", path="pets", image_size=8)
    test = D.load_dataset("image_folder", "test", path="pets", image_size=8)
    assert len(train) == 8 and len(test) == 2  # seeded 80/20 without split folders
    gray = D.load_dataset("image_folder", "all", path=str(data_env / "pets"), image_size=6, channels=1)
    assert gray.images.shape == (10, 1, 6, 6)


def test_image_folder_with_split_folders_and_unlabeled(data_env: Path) -> None:
    write_folder(data_env / "set" / "train", {"a": 3, "b": 2})
    write_folder(data_env / "set" / "test", {"a": 1, "b": 2})
    train = D.load_dataset("image_folder", "train", path="set", image_size=8)
    test = D.load_dataset("image_folder", "test", path="set", image_size=8)
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1, 1]
    assert len(D.load_dataset("image_folder", "all", path="set", image_size=8)) == 8
    write_folder(data_env / "uneven" / "train", {"a": 1, "b": 1, "c": 1})
    write_folder(data_env / "uneven" / "test", {"a": 1, "c": 1})
    uneven = D.load_dataset("image_folder", "test", path="uneven", image_size=8)
    assert uneven.labels.tolist() == [0, 2] and uneven.num_classes == 3  # same indices as train
    flat = data_env / "flat"
    write_folder(data_env / "tmp", {"x": 3})
    (data_env / "tmp" / "x").rename(flat)
    ds = D.load_dataset("image_folder", "all", path="flat", image_size=8)
    assert ds.labels is None and ds.num_classes is None and len(ds) == 3


def test_empty_image_folder_explains_layout(data_env: Path) -> None:
    (data_env / "empty").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        D.load_dataset("image_folder", "all", path="empty", image_size=8)


def test_stream_image_folder_yields_uint8_batches(data_env: Path) -> None:
    write_folder(data_env / "pets", {"cat": 3, "dog": 3})
    loader = D.stream_image_folder("pets", "all", image_size=8, batch_size=4, num_workers=0, pin_memory=False)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.int64


def test_too_big_image_folder_points_to_streaming(data_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(data_env / "pets", {"cat": 3})
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", "100")
    with pytest.raises(DatasetError, match="stream_image_folder"):
        D.load_dataset("image_folder", "all", path="pets", image_size=8)


def test_streaming_samples_only_over_the_limit_and_same_subset_as_in_memory(
        data_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(data_env / "pets", {"cat": 4, "dog": 6})
    kw = dict(path="pets", image_size=8, channels=3)
    assert D.streaming_samples("image_folder", "all", **kw) is None  # 10 x 192 B fit the 8 GiB default
    assert D.streaming_samples("synthetic", "train", path=None, image_size=32, channels=3) is None
    in_memory = D.load_dataset("image_folder", "all", subset=6, seed=3, **kw)
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", str(6 * 3 * 8 * 8))  # the subset decides, not the folder
    assert D.streaming_samples("image_folder", "all", subset=6, seed=3, **kw) is None
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", str(6 * 3 * 8 * 8 - 1))  # one byte short
    samples = D.streaming_samples("image_folder", "all", subset=6, seed=3, **kw)
    assert samples is not None and len(samples) == 6
    decoded = torch.stack([D.DecodedImages(samples, 8, 3)[i][0] for i in range(6)])
    assert torch.equal(decoded, in_memory.images)  # the streamed subset is the in-memory one, in order
    assert len(D.streaming_samples("image_folder", "all", **kw)) == 10
    monkeypatch.setenv("PRETEXTLAB_LOADER_WORKERS", "3")
    assert D.loader_workers() == 3
    monkeypatch.delenv("PRETEXTLAB_LOADER_WORKERS")
    assert 1 <= D.loader_workers() <= 16


# ---------------------------------------------------------------------------
def test_data_settings_read_the_six_variables_and_their_defaults(tmp_path: Path) -> None:
    defaults = D.DataSettings.from_env({})
    assert defaults.data_root == Path("data").absolute() and defaults.extra_roots == ()
    assert defaults.allow_download is False and defaults.fashion_mnist_source == DEBIAN
    assert defaults.max_in_memory_bytes == 8 << 30 and defaults.loader_workers is None
    assert defaults.max_dataset_bytes == 16 << 30 and defaults.max_cache_bytes == 8 << 30
    env = {
        "PRETEXTLAB_DATA_ROOT": str(tmp_path / "d"), "PRETEXTLAB_ALLOWED_DATA_ROOTS": f"/a,{os.pathsep}/b ",
        "PRETEXTLAB_ALLOW_DOWNLOAD": "Yes", "PRETEXTLAB_FASHION_MNIST_SOURCE": "/src",
        "PRETEXTLAB_MAX_IN_MEMORY_BYTES": "123", "PRETEXTLAB_LOADER_WORKERS": "-2",
        "PRETEXTLAB_MAX_DATASET_BYTES": "456", "PRETEXTLAB_MAX_CACHE_BYTES": "789",
    }
    s = D.DataSettings.from_env(env)
    assert (s.max_dataset_bytes, s.max_cache_bytes) == (456, 789)
    assert s.allowed_roots == [tmp_path / "d", Path("/a"), Path("/b")]
    assert s.allow_download and s.fashion_mnist_source == Path("/src")
    assert s.max_in_memory_bytes == 123 and s.loader_workers == 0 and D.loader_workers(s) == 0
    with pytest.raises(DatasetError, match="PRETEXTLAB_MAX_IN_MEMORY_BYTES"):
        D.DataSettings.from_env({"PRETEXTLAB_MAX_IN_MEMORY_BYTES": "8G"})


def test_explicit_settings_win_over_the_environment(data_env: Path, tmp_path: Path) -> None:
    # the environment names data_env; settings passed in name another root, and are the only thing read
    other = tmp_path / "other"
    write_folder(other / "pets", {"cat": 2})
    settings = D.DataSettings(data_root=other, max_in_memory_bytes=10)
    assert D.resolve_path("pets", settings) == (other / "pets").resolve()
    with pytest.raises(DatasetError, match="stream_image_folder"):
        D.load_dataset("image_folder", "all", path="pets", image_size=8, settings=settings)
    assert D.streaming_samples("image_folder", "all", path="pets", image_size=8, channels=3,
                               settings=settings) is not None
    with pytest.raises(DatasetError, match="does not exist"):
        D.resolve_path("pets")  # not under the environment's data root


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["/etc", "../..", "../../etc/passwd", "/"])
def test_paths_outside_the_allowed_roots_are_refused(bad: str) -> None:
    # '..' is refused by spelling before resolution, the rest by containment after it
    with pytest.raises(DatasetError, match="outside the allowed data roots|'\\.\\.' and backslashes"):
        D.resolve_path(bad)
    with pytest.raises(DatasetError):
        D.load_dataset("image_folder", "all", path=bad, image_size=8)


def test_symlink_pointing_out_is_refused(data_env: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_folder(outside, {"a": 2})
    (data_env / "link").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        D.load_dataset("image_folder", "all", path="link", image_size=8)


def test_extra_allowed_root(data_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "mnt"
    write_folder(other / "imgs", {"a": 2})
    monkeypatch.setenv("PRETEXTLAB_ALLOWED_DATA_ROOTS", f"/nonexistent,{other}")
    assert D.allowed_roots()[0] == data_env and other in D.allowed_roots()
    assert D.resolve_path(str(other / "imgs")) == (other / "imgs").resolve()
    assert len(D.load_dataset("image_folder", "all", path=str(other / "imgs"), image_size=8)) == 2
    with pytest.raises(DatasetError, match="does not exist"):
        D.resolve_path("missing-folder")
    with pytest.raises(DatasetError):
        D.resolve_path("bad\x00name")


# ---------------------------------------------------------------------------
def test_subset_resize_channels_and_cache() -> None:
    a = D.load_dataset("synthetic", "test", subset=50, seed=1)
    b = D.load_dataset("synthetic", "test", subset=50, seed=1)
    c = D.load_dataset("synthetic", "test", subset=50, seed=2)
    assert len(a) == 50 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    full = D.load_dataset("synthetic", "test")
    # the subset keeps the original order: its images appear in the full set, increasing positions
    assert torch.equal(a.labels, full.labels[(full.images.flatten(1)[:, None] == a.images.flatten(1)[None])
                                              .all(-1).float().argmax(0)])
    assert D.load_dataset("synthetic", "test") .images.data_ptr() == full.images.data_ptr(), "cached"
    small = D.load_dataset("synthetic", "test", image_size=16)
    assert small.images.shape == (500, 3, 16, 16) and small.images.dtype == torch.uint8
    gray = D.load_dataset("synthetic", "test", channels=1)
    assert gray.images.shape == (500, 1, 32, 32)
    digits3 = D.load_dataset("digits", "test", channels=3, image_size=16)
    assert digits3.images.shape == (359, 3, 16, 16)
    assert torch.equal(digits3.images[:, 0], digits3.images[:, 2])
    assert len(D.load_dataset("digits", "test", subset=10_000)) == 359


def test_bad_names_and_splits() -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        D.load_dataset("imagenet", "train")
    with pytest.raises(DatasetError, match="no split"):
        D.load_dataset("digits", "unlabeled")
    with pytest.raises(DatasetError, match="only image_folder"):
        D.load_dataset("digits", "train", path="x")


def test_load_from_spec() -> None:
    spec = specs.PretrainSpec(method={"name": "rotation"}, data={"dataset": "synthetic", "subset": 20, "image_size": 16})
    ds = D.load_from_spec(spec.data, seed=0)
    assert ds.images.shape == (20, 3, 16, 16) and ds.split == "train"


# ---------------------------------------------------------------------------
# Memory bounds: the budget before any decoding, the subset before the resize, a cache bounded in bytes
def test_a_request_over_the_budget_is_refused_before_anything_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl_core.data.load as load

    def never(*a, **k):
        raise AssertionError("the loader ran")

    monkeypatch.setitem(load.DATASET_LOADERS, "synthetic", never)
    settings = D.DataSettings.from_env()
    tight = D.DataSettings(data_root=settings.data_root, max_dataset_bytes=100 * 3 * 64 * 64 - 1)
    with pytest.raises(DatasetError) as err:
        D.load_dataset("synthetic", "train", image_size=64, subset=100, settings=tight)
    msg = str(err.value)
    assert "data.image_size" in msg and "data.subset" in msg and "PRETEXTLAB_MAX_DATASET_BYTES" in msg
    assert "100 images of 3 x 64 x 64 px need 1,228,800 bytes" in msg
    monkeypatch.setenv("PRETEXTLAB_MAX_DATASET_BYTES", "1000")  # the environment's budget, for every set
    with pytest.raises(DatasetError, match="PRETEXTLAB_MAX_DATASET_BYTES"):
        D.load_dataset("digits", "train")


def test_the_subset_is_taken_before_the_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl_core.data.load as load

    resized = []
    real = load.resize_images
    monkeypatch.setattr(load, "resize_images", lambda x, size: (resized.append(x.shape[0]), real(x, size))[1])
    ds = D.load_dataset("synthetic", "train", image_size=48, subset=10, seed=4)
    assert resized == [10] and ds.images.shape == (10, 3, 48, 48)
    full = D.load_dataset("synthetic", "train", image_size=48)  # the same images as subsetting afterwards
    idx = D.subset_indices(2000, 10, 4)
    assert torch.equal(ds.images, full.images[idx])


def test_stl10_at_512_px_with_a_small_subset_fits(monkeypatch: pytest.MonkeyPatch, data_env: Path) -> None:
    """All of stl10's unlabeled split at 512 px would be 79 GB; ten images are 7.9 MB, and only they are read."""
    import numpy as np

    folder = data_env / "stl10_binary"
    folder.mkdir()
    n = 40  # a small stand-in for unlabeled_X.bin (same layout); the budget uses the real split's size
    np.random.default_rng(0).integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / "unlabeled_X.bin")
    ds = D.load_dataset("stl10", "unlabeled", image_size=512, subset=10)
    assert ds.images.shape == (10, 3, 512, 512)
    with pytest.raises(DatasetError, match=r"100000 images of 3 x 512 x 512 px need 73\.24 GiB"):
        D.load_dataset("stl10", "unlabeled", image_size=512)


def test_the_cache_is_bounded_in_bytes(data_env: Path) -> None:
    import ssl_core.data.load as load

    one = 20 * 3 * 32 * 32 + 20 * 8  # 20 synthetic images and their labels
    settings = D.DataSettings(data_root=data_env, max_cache_bytes=2 * one)
    for seed in range(3):
        D.load_dataset("synthetic", "train", subset=20, seed=seed, settings=settings)
    assert len(load._cache) == 2 and sum(load._nbytes(v) for v in load._cache.values()) == 2 * one
    D.load_dataset("synthetic", "train", settings=settings)  # bigger than the whole cache: not kept
    assert len(load._cache) == 2
