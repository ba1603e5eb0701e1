"""Loaders on tiny files written by each test, plus one check on the real shared data."""

import gzip
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikediff import data as D
from spikediff.data import DatasetError, ImageSet, default_shape, load_images, resolve_data_root

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # Keep extraction/decoding caches and the env var out of the real home.
    monkeypatch.setenv("SPIKEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(D.ENV_DATA_ROOT, raising=False)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def rand_images(n, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_mnist_like(d: Path, split="train", n=5, gz=False, prefix="", seed=0):
    tag = "train" if split == "train" else ("t10k" if not prefix else "test")
    x = rand_images(n, 28, 28, seed=seed)
    y = np.arange(n, dtype=np.uint8) % 10
    write_idx(d / f"{prefix}{tag}-images-idx3-ubyte", x, gz)
    write_idx(d / f"{prefix}{tag}-labels-idx1-ubyte", y, gz)
    return x, y


def save_img(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------ IDX sets

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,sub", [
    ("mnist", "mnist"), ("mnist", "MNIST/raw"), ("mnist", "."),
    ("fashion-mnist", "fashion-mnist"), ("fashion-mnist", "FashionMNIST/raw"),
])
def test_idx_layouts(tmp_path, name, sub, gz):
    x, y = write_mnist_like(tmp_path / sub, "test", n=4, gz=gz)
    ds = load_images(name, tmp_path, "test")
    assert isinstance(ds, ImageSet) and len(ds) == 4
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (4, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(x))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == y.tolist()
    assert (ds.name, ds.split) == (name, "test")
    assert [p.name for p in ds.source_files] == [f"t10k-images-idx3-ubyte{'.gz' * gz}",
                                                 f"t10k-labels-idx1-ubyte{'.gz' * gz}"]
    f = ds.float01()
    assert f.dtype == torch.float32 and 0 <= f.min() and f.max() <= 1
    assert torch.allclose(ds.float01(slice(1, 3)), ds.images[1:3].float() / 255)


def test_env_var_root_and_train_split(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "mnist", "train", n=3)
    monkeypatch.setenv(D.ENV_DATA_ROOT, str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert len(load_images("mnist", None)) == 3


# -------------------------------------------------------------------- KMNIST

def test_kmnist_full_npz(tmp_path):
    d = tmp_path / "kmnist"
    d.mkdir()
    x, y = rand_images(6, 28, 28), np.arange(6, dtype=np.uint8)
    np.savez(d / "kmnist-train-imgs.npz", x)
    np.savez(d / "kmnist-train-labels.npz", y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the full file must not warn
        ds = load_images("kmnist", tmp_path, "train")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(x)) and ds.labels.tolist() == list(range(6))


def test_kmnist_partial_train_file_warns(tmp_path):
    d = tmp_path / "KMNIST" / "raw"
    d.mkdir(parents=True)
    x, y = rand_images(5, 28, 28), np.array([3, 1, 4, 1, 5], np.uint8)
    np.savez(d / "kmnist-train-imgs-first7011.npz", x=x, y=y)
    np.savez(d / "kmnist-train-labels.npz", np.arange(60, dtype=np.uint8))
    with pytest.warns(UserWarning, match="only 5 of the 60,000 train images"):
        ds = load_images("kmnist", tmp_path, "train")
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [3, 1, 4, 1, 5]


def test_kmnist_idx_from_torchvision(tmp_path):
    x, _ = write_mnist_like(tmp_path / "KMNIST" / "raw", "test", n=2, gz=True)
    assert torch.equal(load_images("kmnist", tmp_path, "test").images[:, 0], torch.from_numpy(x))


# ------------------------------------------------------------------- EMNIST

@pytest.mark.parametrize("sub", ["emnist", "EMNIST/raw/gzip"])
def test_emnist_orientation_fixed(tmp_path, sub):
    upright = np.zeros((28, 28), np.uint8)
    upright[:, 3] = 255          # a vertical bar on the left...
    upright[25, 3:20] = 128      # ...and a foot to the right: an "L"
    stored = upright.T[None]     # EMNIST keeps images transposed
    write_idx(tmp_path / sub / "emnist-letters-test-images-idx3-ubyte", stored, gz=True)
    write_idx(tmp_path / sub / "emnist-letters-test-labels-idx1-ubyte", np.array([12]), gz=True)
    ds = load_images("emnist-letters", tmp_path, "test")
    assert np.array_equal(ds.images[0, 0].numpy(), upright)
    assert ds.labels.tolist() == [12]  # labels 1..26 kept as stored


# ------------------------------------------------------------------ CIFAR-10

def cifar_batch(n, seed):
    img = rand_images(n, 3, 32, 32, seed=seed)
    # Real format: each row is 1024 R, 1024 G, 1024 B values, planes row-major.
    rows = np.stack([np.concatenate([im[0].ravel(), im[1].ravel(), im[2].ravel()]) for im in img])
    return img, {b"data": rows, b"labels": list(range(n)), b"batch_label": b"x"}


def test_cifar_pickle_batches(tmp_path):
    d = tmp_path / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    imgs = []
    for i in range(1, 6):
        img, batch = cifar_batch(2, seed=i)
        imgs.append(img)
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    red, test = cifar_batch(1, seed=9)
    test[b"data"][:] = 0
    test[b"data"][0, :1024] = 255  # only the red plane lit
    (d / "test_batch").write_bytes(pickle.dumps(test))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile"]}))

    ds = load_images("cifar10", tmp_path, "train")
    assert ds.images.shape == (10, 3, 32, 32) == (len(ds), *default_shape("cifar10"))
    assert torch.equal(ds.images, torch.from_numpy(np.concatenate(imgs)))
    assert ds.labels.tolist() == [0, 1] * 5 and ds.classes == ("airplane", "automobile")
    t = load_images("cifar10", tmp_path, "test").images[0]
    assert (t[0] == 255).all() and (t[1:] == 0).all()


def make_tree(base: Path, n_per_class=2, ext="png"):
    rng = np.random.default_rng(1)
    out = {}
    for split in ("train", "test"):
        for c in ("cat", "airplane"):
            for i in range(n_per_class):
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                save_img(base / split / c / f"{i:04d}.{ext}", a)
                out[(split, c, i)] = a
    return out


def test_cifar_image_tree_and_decoded_cache(tmp_path, monkeypatch):
    imgs = make_tree(tmp_path / "cifar10" / "cifar10-jpeg-q75")
    ds = load_images("cifar10", tmp_path, "test")
    assert ds.classes == ("airplane", "cat")  # sorted, as the official class order is
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(ds.images[2].permute(1, 2, 0).numpy(), imgs[("test", "cat", 0)])
    assert len(ds.source_files) == 4
    # The second load must come from the decoded cache.
    monkeypatch.setattr(D, "_decode_all", lambda *a, **k: pytest.fail("decoded again"))
    again = load_images("cifar10", tmp_path, "test")
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)


def test_cifar_jpeg_tree_decodes(tmp_path):
    make_tree(tmp_path / "cifar10", n_per_class=1, ext="jpg")
    ds = load_images("cifar10", tmp_path, "train")
    assert ds.images.shape == (2, 3, 32, 32) and ds.images.float().std() > 10


def make_tarball(path: Path, src: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)


def test_cifar_tarball_extracted_beside_once(tmp_path, monkeypatch):
    imgs = make_tree(tmp_path / "src")
    tar = tmp_path / "root" / "cifar10" / "cifar10-jpeg-q75.tar.gz"
    make_tarball(tar, tmp_path / "src")
    ds = load_images("cifar10", tmp_path / "root", "train")
    assert (tar.parent / "cifar10-jpeg-q75" / "train" / "cat").is_dir()
    assert ds.source_files == [tar]
    assert np.array_equal(ds.images[3].permute(1, 2, 0).numpy(), imgs[("train", "cat", 1)])
    monkeypatch.setattr(D.tarfile, "open", lambda *a, **k: pytest.fail("extracted twice"))
    assert load_images("cifar10", tmp_path / "root", "test").source_files == [tar]


def test_cifar_tarball_read_only_root_uses_cache(tmp_path):
    make_tree(tmp_path / "src", n_per_class=1)
    d = tmp_path / "root" / "cifar10"
    make_tarball(d / "cifar10-jpeg-q75.tar.gz", tmp_path / "src")
    d.chmod(0o555)
    try:
        ds = load_images("cifar10", tmp_path / "root", "test", image_size=28)
        assert sorted(p.name for p in d.iterdir()) == ["cifar10-jpeg-q75.tar.gz"]
    finally:
        d.chmod(0o755)
    assert ds.images.shape == (2, 3, 28, 28)
    extracted = list((tmp_path / "cache" / "data").glob("cifar10-jpeg-q75-*"))
    assert len(extracted) == 1 and (extracted[0] / "test" / "cat").is_dir()


def test_official_cifar_tarball_of_pickles(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    img, batch = cifar_batch(2, seed=5)
    (src / "test_batch").write_bytes(pickle.dumps(batch))
    make_tarball(tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz", tmp_path / "src")
    for _ in range(2):  # extracting, then already extracted
        ds = load_images("cifar10", tmp_path / "root", "test")
        assert torch.equal(ds.images, torch.from_numpy(img))
        assert ds.source_files == [tmp_path / "root/cifar10/cifar-10-python/cifar-10-batches-py/test_batch"]


def test_tarball_with_top_folder(tmp_path):
    imgs = make_tree(tmp_path / "src" / "cifar10-jpeg-q75", n_per_class=1)
    tar = tmp_path / "root" / "cifar10" / "pack.tgz"
    make_tarball(tar, tmp_path / "src")
    for _ in range(2):
        ds = load_images("cifar10", tmp_path / "root", "test")
        assert ds.source_files == [tar]
        assert np.array_equal(ds.images[1].permute(1, 2, 0).numpy(), imgs[("test", "cat", 0)])


# ------------------------------------------------------------ image_size, rgb

def test_rgb_and_resize_options(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    img, batch = cifar_batch(3, seed=4)
    (d / "test_batch").write_bytes(pickle.dumps(batch))

    gray = load_images("cifar10", tmp_path, "test", rgb=False)
    pil = np.asarray(Image.fromarray(img[1].transpose(1, 2, 0)).convert("L"))
    assert gray.images.shape == (3, 1, 32, 32)
    assert np.abs(gray.images[1, 0].numpy().astype(int) - pil).max() <= 1
    assert load_images("cifar10", tmp_path, "test", image_size=28).images.shape == (3, 3, 28, 28)

    flat = np.full((2, 28, 28), 77, np.uint8)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", flat)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    m = load_images("mnist", tmp_path, "test", rgb=True, image_size=14)
    assert m.images.shape == (2, 3, 14, 14) and (m.images == 77).all()


# -------------------------------------------------------------- image folder

def test_generic_folder(tmp_path):
    f = tmp_path / "pics"
    save_img(f / "dogs" / "a.png", np.full((40, 60, 3), 200, np.uint8))   # non-square RGB
    save_img(f / "cats" / "deep" / "b.JPG", np.full((10, 10), 50, np.uint8))  # nested, gray
    save_img(f / "loose.bmp", np.zeros((28, 28, 3), np.uint8))
    (f / "notes.txt").write_text("not an image")
    ds = load_images("folder", None, folder=str(f))
    assert ds.images.shape == (3, 1, 28, 28) and ds.classes == ("cats", "dogs")
    assert ds.labels.tolist() == [0, 1, -1]  # sorted paths: cats/, dogs/, loose.bmp
    assert abs(int(ds.images[1].float().mean()) - 200) <= 2
    rgb = load_images("folder", None, folder=str(f), rgb=True, image_size=16)
    assert rgb.images.shape == (3, 3, 16, 16)


def test_folder_uses_split_subfolder(tmp_path):
    save_img(tmp_path / "train" / "x" / "0.png", np.zeros((28, 28), np.uint8))
    save_img(tmp_path / "test" / "y" / "0.png", np.zeros((28, 28), np.uint8))
    save_img(tmp_path / "test" / "y" / "1.png", np.zeros((28, 28), np.uint8))
    ds = load_images("folder", tmp_path, "test")  # the data root doubles as the folder
    assert len(ds) == 2 and ds.classes == ("y",)


# -------------------------------------------------------------------- errors

def test_no_root_given():
    with pytest.raises(DatasetError, match="--data-root.*SPIKEDIFF_DATA_ROOT"):
        resolve_data_root(None)
    with pytest.raises(DatasetError, match="folder=PATH"):
        load_images("folder", None)


def test_dataset_error_is_a_cli_user_error():
    errors = pytest.importorskip("spikediff.errors")
    assert issubclass(DatasetError, errors.SpikediffError)


def test_root_missing(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_images("mnist", tmp_path / "nope")


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(DatasetError, match="valid names are mnist, fashion-mnist, kmnist, emnist-letters, cifar10"):
        load_images("svhn", tmp_path)
    with pytest.raises(DatasetError, match="unknown split"):
        load_images("mnist", tmp_path, "validation")


@pytest.mark.parametrize("name,expect", [
    ("mnist", "train-images-idx3-ubyte"), ("fashion-mnist", "train-labels-idx1-ubyte"),
    ("kmnist", "kmnist-train-imgs.npz"), ("emnist-letters", "emnist-letters-train-images"),
    ("cifar10", "data_batch_1"),
])
def test_missing_files_message(tmp_path, name, expect):
    with pytest.raises(DatasetError) as e:
        load_images(name, tmp_path)
    msg = str(e.value)
    assert name in msg and expect in msg and "--download" in msg and "http" in msg
    assert str(tmp_path / name.split("-letters")[0]) in msg and f"\n  {tmp_path}\n" in msg


def test_labels_missing_names_what_was_found(tmp_path):
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", rand_images(2, 28, 28))
    with pytest.raises(DatasetError, match="found only: .*train-images-idx3-ubyte"):
        load_images("mnist", tmp_path)


@pytest.mark.parametrize("corrupt,why", [
    (lambda raw: raw[:-10], "header says"),                       # truncated data
    (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "not an IDX"),    # wrong magic
    (lambda raw: raw[:6], "truncated header"),
])
def test_malformed_idx(tmp_path, corrupt, why):
    p = write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", rand_images(2, 28, 28))
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.array([0, 1]))
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(DatasetError, match=f"{p}.*{why}"):
        load_images("mnist", tmp_path)


def test_truncated_gzip_and_count_mismatch(tmp_path):
    p = write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", rand_images(3, 28, 28), gz=True)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.array([0, 1]), gz=True)
    with pytest.raises(DatasetError, match="3 images but .* 2 labels"):
        load_images("mnist", tmp_path, "test")
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DatasetError, match=f"malformed data file {p}"):
        load_images("mnist", tmp_path, "test")


def test_bad_cifar_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="test_batch.*N x 3072"):
        load_images("cifar10", tmp_path, "test")


def test_download_is_wired_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []

    def fake_mnist(root, train, download):  # writes what torchvision would
        calls.append((Path(root), train, download))
        write_mnist_like(Path(root) / "MNIST" / "raw", "train" if train else "test", n=2)

    monkeypatch.setattr(tvd, "MNIST", fake_mnist)
    root = tmp_path / "new"  # a download target may not exist yet
    ds = load_images("mnist", root, "test", download=True)
    assert calls == [(root, False, True)] and len(ds) == 2
    load_images("mnist", root, "test", download=True)
    assert len(calls) == 1  # present now: no second download

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetError, match="downloading cifar10 .* failed .*network unreachable"):
        load_images("cifar10", tmp_path, download=True)


# ------------------------------------------------------- the real shared data

@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data sets not present")
def test_real_shared_data():
    m = load_images("mnist", SHARED, "test")
    assert m.images.shape == (10000, 1, 28, 28) and m.labels.unique().tolist() == list(range(10))
    with pytest.warns(UserWarning, match="7,011"):
        k = load_images("kmnist", SHARED, "train")
    assert k.images.shape == (7011, 1, 28, 28) and len(k.labels) == 7011
