"""Image data sets as in-memory uint8 tensors.

Every loader returns an `ImageSet` holding the whole split as one uint8
tensor [N, C, H, W]: the data sets are small (at most 60k x 3 x 32 x 32 =
180 MB) and batching from one tensor is much faster on a CPU than a
per-item Dataset/DataLoader pipeline.

Supported: mnist, fashion-mnist, kmnist, emnist-letters, cifar10 in their
official and torchvision layouts, and any image folder ("folder").
Problems with the data are raised as `DatasetError` with a message meant for
the user (what was looked for, where, and how to get it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# torch is imported where tensors are made, so that building the command line's
# parser (which needs DATASETS) stays fast: `spikediff --help` does not load it.

from .errors import SpikediffError

DATASETS = ("mnist", "fashion-mnist", "kmnist", "emnist-letters", "cifar10")
ENV_DATA_ROOT = "SPIKEDIFF_DATA_ROOT"
SPLITS = ("train", "test")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")

_SOURCES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)",
    "kmnist": "https://github.com/rois-codh/kmnist (kmnist-*-imgs.npz / kmnist-*-labels.npz)",
    "emnist-letters": "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip "
                      "(see https://www.nist.gov/itl/products-and-services/emnist-dataset)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}


class DatasetError(SpikediffError):
    """A data set is missing, malformed or unknown; the message is for the user."""


class _MissingData(DatasetError):
    """Files not found (as opposed to found but broken): `download=True` may help."""


@dataclass
class ImageSet:
    images: torch.Tensor          # uint8 [N, C, H, W]
    labels: torch.Tensor          # int64 [N], -1 where unknown
    name: str
    split: str
    source_files: list[Path]      # the files the data came from (for cache keys)
    classes: tuple[str, ...] = field(default=())  # class names where the source has them

    def float01(self, idx=None) -> torch.Tensor:
        import torch
        x = self.images if idx is None else self.images[idx]
        return x.to(torch.float32) / 255.0

    def __len__(self) -> int:
        return int(self.images.shape[0])


def default_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) a data set loads as when neither image_size nor rgb is given."""
    name = _canonical(name)
    return (3, 32, 32) if name == "cifar10" else (1, 28, 28)


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The data root from the argument, else $SPIKEDIFF_DATA_ROOT; it must exist."""
    raw = data_root if data_root not in (None, "") else os.environ.get(ENV_DATA_ROOT) or None
    if raw is None:
        raise DatasetError(
            f"no data root given: pass --data-root DIR or set the environment variable "
            f"{ENV_DATA_ROOT}=DIR (the folder that holds mnist/, cifar10/, ...)")
    root = Path(raw).expanduser()
    if not root.is_dir():
        origin = "--data-root" if data_root not in (None, "") else f"${ENV_DATA_ROOT}"
        raise _MissingData(f"data root {root} (from {origin}) does not exist or is not a folder")
    return root


def load_images(name: str, data_root=None, split: str = "train", *,
                image_size: int | None = None, rgb: bool | None = None,
                download: bool = False, folder: str | None = None) -> ImageSet:
    """Load one split of a data set into memory.

    image_size: resize to image_size x image_size (antialiased); default keeps
    28x28 for the grayscale sets and 32x32 for CIFAR-10. rgb: True for 3
    channels, False for grayscale; default grayscale except CIFAR-10.
    "folder" loads any image tree (folder=PATH, or the data root itself); a
    `train`/`test` subfolder matching `split` is used when present.
    """
    name = _canonical(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    c, h, _ = default_shape(name)
    channels = c if rgb is None else (3 if rgb else 1)
    size = image_size
    if size is not None and (int(size) != size or size < 1):
        raise DatasetError(f"image_size must be a positive integer, got {size!r}")

    if name == "folder":
        if not folder and data_root in (None, "") and not os.environ.get(ENV_DATA_ROOT):
            raise DatasetError("the folder data set needs a folder: pass folder=PATH (--folder)")
        path = Path(folder).expanduser() if folder else resolve_data_root(data_root)
        # Arbitrary sizes and modes: decode each image straight to the target shape.
        return _load_folder(path, split, channels, size or h)

    if download:  # a fresh download target need not exist yet
        raw = data_root if data_root not in (None, "") else os.environ.get(ENV_DATA_ROOT)
        if raw:
            Path(raw).expanduser().mkdir(parents=True, exist_ok=True)
    root = resolve_data_root(data_root)
    loader = _LOADERS[name]
    try:
        data = loader(root, split)
    except _MissingData:
        if not download:
            raise
        _download(name, root, split)
        data = loader(root, split)
    return _convert(data, channels, size)


# ----------------------------------------------------------------- helpers

def _canonical(name: str) -> str:
    n = str(name).strip().lower().replace("_", "-")
    n = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "emnistletters": "emnist-letters"}.get(n, n)
    if n not in DATASETS and n != "folder":
        raise DatasetError(f"unknown data set {name!r}: valid names are {', '.join(DATASETS)}, folder")
    return n


def _convert(data: ImageSet, channels: int, size: int | None) -> ImageSet:
    import torch
    x = data.images
    if x.shape[1] != channels:
        x = _to_gray(x) if channels == 1 else x.expand(-1, 3, -1, -1).contiguous()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        from torchvision.transforms.v2 import functional as TF
        # Chunked: the resize may go through float internally.
        x = torch.cat([TF.resize(x[i:i + 8192], [size, size], antialias=True)
                       for i in range(0, len(x), 8192)])
    data.images = x
    return data


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    import torch
    # ITU-R 601-2 luma in integers, the same formula as PIL's convert("L").
    # Chunked so that the int32 intermediate stays small.
    w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return torch.cat([(((x[i:i + 8192].to(torch.int32) * w).sum(1, keepdim=True) + 500) // 1000)
                      .to(torch.uint8) for i in range(0, len(x), 8192)])


def _find(dirs: list[Path], names: list[str]) -> dict[str, Path]:
    """First existing file for each name (also as .gz), searching dirs in order."""
    found = {}
    for n in names:
        for d in dirs:
            for cand in (d / n, d / (n + ".gz")):
                if cand.is_file():
                    found[n] = cand
                    break
            if n in found:
                break
    return found


def _missing(name: str, split: str, dirs: list[Path], expected: list[str], found=(), extra="") -> _MissingData:
    looked = "\n".join(f"  {d}{'' if d.is_dir() else '  (does not exist)'}" for d in dirs)
    got = f"\nfound only: {', '.join(str(p) for p in found)}" if found else ""
    return _MissingData(
        f"{name} ({split} split) not found.\nlooked in:\n{looked}\n"
        f"for the files: {', '.join(expected)}{got}{extra}\n"
        f"to get it: pass --download (torchvision downloads it into the data root), "
        f"or fetch it from {_SOURCES[name]} into {dirs[0]}")


def _bad(path: Path, why: str) -> DatasetError:
    return DatasetError(f"malformed data file {path}: {why}. Delete it and fetch it again "
                        f"(or pass --download after deleting it).")


# ---------------------------------------------------------------- IDX sets

def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # truncated or not-really-gzip files
        raise _bad(path, f"cannot be read ({e})") from None
    # Magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise _bad(path, f"not an IDX file of {ndim}-D unsigned bytes (magic {raw[:4].hex() or 'missing'})")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise _bad(path, "truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    n = int(np.prod(dims))
    if len(raw) - head != n:
        raise _bad(path, f"header says {'x'.join(map(str, dims))} = {n} bytes of data, file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_pair(name: str, dirs: list[Path], split: str, prefix: str = "") -> tuple[np.ndarray, np.ndarray, list[Path]]:
    tag = "train" if split == "train" else ("t10k" if not prefix else "test")
    names = [f"{prefix}{tag}-images-idx3-ubyte", f"{prefix}{tag}-labels-idx1-ubyte"]
    found = _find(dirs, names)
    if len(found) < 2:
        raise _missing(name, split, dirs, [n + "[.gz]" for n in names], list(found.values()))
    imgs = _read_idx(found[names[0]], 3)
    labels = _read_idx(found[names[1]], 1)
    if len(imgs) != len(labels):
        raise DatasetError(f"{name} ({split}): {found[names[0]]} has {len(imgs)} images but "
                           f"{found[names[1]]} has {len(labels)} labels")
    return imgs, labels, [found[n] for n in names]


def _make(name, split, imgs: np.ndarray, labels, files, classes=()) -> ImageSet:
    import torch
    arr = np.ascontiguousarray(imgs)
    if not arr.flags.writeable:  # np.frombuffer views; torch wants its own memory
        arr = arr.copy()
    x = torch.from_numpy(arr)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    return ImageSet(x, y, name, split, list(files), tuple(classes))


def _load_mnist(root: Path, split: str) -> ImageSet:
    dirs = [root / "mnist", root / "MNIST" / "raw", root]
    return _make("mnist", split, *_idx_pair("mnist", dirs, split))


def _load_fashion(root: Path, split: str) -> ImageSet:
    dirs = [root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw", root]
    return _make("fashion-mnist", split, *_idx_pair("fashion-mnist", dirs, split))


def _load_emnist(root: Path, split: str) -> ImageSet:
    dirs = [root / "emnist", root / "emnist" / "gzip", root / "EMNIST" / "raw",
            root / "EMNIST" / "raw" / "gzip", root / "gzip", root]
    imgs, labels, files = _idx_pair("emnist-letters", dirs, split, prefix="emnist-letters-")
    # EMNIST stores each image transposed (column-major); flip back upright.
    # Labels stay as in the file: 1..26 for a..z.
    return _make("emnist-letters", split, imgs.transpose(0, 2, 1), labels, files)


# ------------------------------------------------------------------- KMNIST

def _npz_array(path: Path, keys: tuple[str, ...]) -> np.ndarray:
    try:
        with np.load(path) as z:
            for k in keys:
                if k in z.files:
                    return z[k]
            raise _bad(path, f"has keys {z.files}, expected one of {list(keys)}")
    except DatasetError:
        raise
    except Exception as e:  # zipfile/pickle/value errors from a broken file
        raise _bad(path, f"cannot be read as .npz ({e})") from None


def _load_kmnist(root: Path, split: str) -> ImageSet:
    dirs = [root / "kmnist", root / "KMNIST" / "raw", root]
    imgs_f = _find(dirs, [f"kmnist-{split}-imgs.npz"]).get(f"kmnist-{split}-imgs.npz")
    labels_f = _find(dirs, [f"kmnist-{split}-labels.npz"]).get(f"kmnist-{split}-labels.npz")
    partial = None
    if imgs_f is None and split == "train":
        partial = _find(dirs, ["kmnist-train-imgs-first7011.npz"]).get("kmnist-train-imgs-first7011.npz")
    if imgs_f is not None or partial is not None:
        if partial is not None:
            with np.load(partial) as z:
                keys = z.files
            imgs = _npz_array(partial, ("x", "arr_0"))
            if "y" in keys:
                labels, files = _npz_array(partial, ("y",)), [partial]
            elif labels_f is not None:
                labels, files = _npz_array(labels_f, ("arr_0",))[:len(imgs)], [partial, labels_f]
            else:
                raise _missing("kmnist", split, dirs, ["kmnist-train-labels.npz"], [partial])
            warnings.warn(f"KMNIST: the full train image file is missing; using {partial.name}, "
                          f"only {len(imgs):,} of the 60,000 train images", stacklevel=3)
        else:
            if labels_f is None:
                raise _missing("kmnist", split, dirs, [f"kmnist-{split}-labels.npz"], [imgs_f])
            imgs, labels = _npz_array(imgs_f, ("arr_0",)), _npz_array(labels_f, ("arr_0",))
            files = [imgs_f, labels_f]
        if imgs.ndim != 3 or imgs.dtype != np.uint8 or len(imgs) != len(labels):
            raise _bad(files[0], f"expected N x 28 x 28 uint8 images with N labels, got "
                                 f"{imgs.shape} {imgs.dtype} and {len(labels)} labels")
        return _make("kmnist", split, imgs, labels, files)
    # torchvision's KMNIST downloads the IDX version of the same data.
    try:
        return _make("kmnist", split, *_idx_pair("kmnist", dirs, split))
    except _MissingData:
        raise _missing("kmnist", split, dirs,
                       [f"kmnist-{split}-imgs.npz", f"kmnist-{split}-labels.npz"]
                       + (["(or kmnist-train-imgs-first7011.npz)"] if split == "train" else [])
                       + ["(or the IDX files train-images-idx3-ubyte[.gz] ... in KMNIST/raw)"]) from None


# ------------------------------------------------------------------ CIFAR-10

def _cifar_dirs(root: Path) -> list[Path]:
    return [root / "cifar10", root / "cifar-10", root / "CIFAR10", root]


def _containers(root: Path) -> list[Path]:
    """Folders that may directly hold batches or a train/test tree."""
    out = []
    for d in _cifar_dirs(root):
        out.append(d)
        # One level down (e.g. cifar10/cifar10-jpeg-q75/), but not below the
        # bare root, where sibling data sets live.
        if d != root and d.is_dir():
            out += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return out


def _load_cifar(root: Path, split: str) -> ImageSet:
    for c in _containers(root):
        for b in (c / "cifar-10-batches-py", c):
            if (b / "data_batch_1").is_file() or (b / "test_batch").is_file():
                return _cifar_pickles(b, split)
        if _is_tree(c / split):
            # A tree we extracted earlier reports its tarball, as on first load.
            tar = next((t for t in (c.parent / f"{c.name}.tar.gz", c.parent / f"{c.name}.tgz")
                        if t.is_file()), None)
            return _cifar_tree(c / split, split, origin=tar)
    for d in _cifar_dirs(root):
        if not d.is_dir():
            continue
        tars = sorted(d.glob("*.tar.gz")) + sorted(d.glob("*.tgz"))
        if d == root:  # the bare root may hold other data sets' archives
            tars = [t for t in tars if "cifar" in t.name.lower()]
        for t in tars:
            extracted = _extract_once(t)
            # Archives often wrap everything in one top folder: look one level down too.
            for c in [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir()):
                for b in (c / "cifar-10-batches-py", c):
                    if (b / "data_batch_1").is_file() or (b / "test_batch").is_file():
                        return _cifar_pickles(b, split)
                if _is_tree(c / split):
                    return _cifar_tree(c / split, split, origin=t)
    raise _missing("cifar10", split, _cifar_dirs(root),
                   ["cifar-10-batches-py/{data_batch_1..5,test_batch}",
                    f"or an image tree {split}/<class>/*.jpg|png",
                    "or a tarball *.tar.gz of either"])


def _cifar_pickles(d: Path, split: str) -> ImageSet:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [d / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise _missing("cifar10", split, [d], names, [f for f in files if f.is_file()])
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as e:
            raise _bad(f, f"not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise _bad(f, f"data is {x.shape}, expected N x 3072 with N labels")
        # Rows are 1024 R, then 1024 G, then 1024 B values, each plane row-major.
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    classes = ()
    meta = d / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as fh:
                classes = tuple(n.decode() for n in pickle.load(fh, encoding="bytes")[b"label_names"])
        except Exception:
            classes = ()  # the names are a convenience; the data is already read
    return _make("cifar10", split, np.concatenate(xs), np.concatenate(ys), files, classes)


def _is_tree(d: Path) -> bool:
    return d.is_dir() and any(p.is_dir() for p in d.iterdir())


def _cache_dir() -> Path:
    return Path(os.environ.get("SPIKEDIFF_CACHE") or Path.home() / ".cache" / "spikediff") / "data"


def _writable(d: Path) -> bool:
    # os.access alone says yes to root even for r-x folders (like the shared
    # data sets), so also honour the permission bits.
    return os.access(d, os.W_OK) and bool(d.stat().st_mode & 0o222)


def _extract_once(tar: Path) -> Path:
    """Extract a tarball once, beside it if writable, else into the cache."""
    stem = tar.name.removesuffix(".tar.gz").removesuffix(".tgz")
    st = tar.stat()
    if _writable(tar.parent):
        dest = tar.parent / stem
    else:
        # Keyed by size and mtime so a replaced tarball is extracted afresh.
        dest = _cache_dir() / f"{stem}-{st.st_size}-{int(st.st_mtime)}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Extract into a temp folder beside the target and rename: an interrupted
    # extraction never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.part-", dir=dest.parent))
    try:
        with tarfile.open(tar) as tf:
            # The "data" filter refuses absolute paths, links out, devices.
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # Python < 3.11.4
                tf.extractall(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # someone else finishing first is fine
                raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _bad(tar, f"cannot be extracted ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _decode_all(files: list[Path], mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """The images as one uint8 array [N, C, H, W], each converted to `mode`
    and (size given) centre-cropped and resized to `size`; a folder of mixed
    sizes or modes says so in one line on stderr. Unreadable images and
    decompression bombs are refused (DatasetError)."""
    from PIL import Image, ImageOps

    def one(p: Path) -> tuple[np.ndarray, tuple[int, int], str]:
        try:
            with Image.open(p) as im:
                limit = Image.MAX_IMAGE_PIXELS  # None: the user turned the check off
                if limit and im.width * im.height > limit:  # PIL only warns up to 2x
                    raise Image.DecompressionBombError(f"{im.width}x{im.height}")
                original = (im.size, im.mode)
                im = im.convert(mode)
                if size is not None and im.size != size:
                    # Centre crop to square, then antialiased resize.
                    im = ImageOps.fit(im, size, method=Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8), *original
        except Image.DecompressionBombError as e:
            raise DatasetError(
                f"image {p} is refused as a possible decompression bomb ({e}: more than "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels); shrink it or remove it from the "
                "folder") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways to fail
            raise DatasetError(f"cannot decode image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    # PIL releases the GIL while decoding, so threads help. PIL warns of a
    # large image (DecompressionBombWarning) when opening it; `one` refuses
    # those itself, so the warning is kept out of the output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
            decoded = list(ex.map(one, files))
    arrs = [a for a, _, _ in decoded]
    sizes = sorted({s for _, s, _ in decoded})
    modes = sorted({m for _, _, m in decoded})
    if size is not None and (len(sizes) > 1 or len(modes) > 1):
        print(f"note: the {len(files)} images have {len(sizes)} sizes and {len(modes)} modes "
              f"({', '.join(f'{w}x{h}' for w, h in sizes[:3])}{', ...' if len(sizes) > 3 else ''}; "
              f"{', '.join(modes)}): each is converted to {mode} and centre-cropped and resized "
              f"to {size[0]}x{size[1]}", file=sys.stderr)
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise DatasetError(f"the images in {files[0].parent} have different sizes "
                           f"({', '.join(f'{w}x{h}' for w, h in sizes[:4])}); they must all "
                           "have one size")
    x = np.stack(arrs)
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def source_hashes(files) -> list[str]:
    """sha256 of each file, remembered on disk by (path, size, mtime), so a
    data set is read in full once, not at every start of a run."""
    store = _cache_dir() / "source-sha256.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    out, new = [], False
    for f in files:
        path = Path(f).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        digest = table.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            digest = table[key] = h.hexdigest()
            new = True
        out.append(digest)
    if new:
        try:  # an optimisation: failing to write it is harmless
            from .atomic import write_text
            write_text(store, json.dumps(table))
        except OSError:
            pass
    return out


def data_digest(hashes: list[str]) -> str:
    """One sha256 over a data set's files' hashes, in their order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def _tree_key(d: Path, files: list[Path]) -> str:
    h = hashlib.sha256(str(d.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _read_decoded(cache: Path):
    try:
        with np.load(cache) as z:
            return z["images"], z["labels"], tuple(str(c) for c in z["classes"])
    except Exception:
        return None  # missing or damaged: simply rebuilt


def _cifar_tree(d: Path, split: str, origin: Path | None = None) -> ImageSet:
    # Decoding 60k JPEGs takes ~30 s on 2 cores, so the decoded arrays are kept
    # in the cache. A tree from a tarball is keyed by the tarball, which spares
    # even listing the 60k files on a cache hit.
    key = files = None
    if origin is not None:
        st = origin.stat()
        key = hashlib.sha256(f"{origin.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    else:
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        files, labels = _tree_files(d, classes)
        key = _tree_key(d, files)
    cache = _cache_dir() / f"decoded-{d.parent.name}-{split}-{key}.npz"
    hit = _read_decoded(cache)
    if hit is not None:
        x, labels, classes = hit
    else:
        if files is None:
            classes = sorted(p.name for p in d.iterdir() if p.is_dir())
            files, labels = _tree_files(d, classes)
        if not files:
            raise _missing("cifar10", split, [d], [f"{split}/<class>/*.jpg|png"])
        x = _decode_all(files, "RGB", None)
        if x.shape[1:] != (3, 32, 32):
            raise DatasetError(f"cifar10 images in {d} are {x.shape[2]}x{x.shape[3]}, expected 32x32")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.tmp{os.getpid()}.npz")
            np.savez(tmp, images=x, labels=np.asarray(labels, np.int64), classes=np.asarray(classes))
            os.replace(tmp, cache)
        except OSError:
            pass  # caching is an optimisation only
    return _make("cifar10", split, x, labels, [origin] if origin else files, classes)


def _tree_files(d: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for i, c in enumerate(classes):
        fs = _list_images(d / c)
        files += fs
        labels += [i] * len(fs)
    return files, labels


# --------------------------------------------------------------- any folder

def _load_folder(path: Path, split: str, channels: int, size: int) -> ImageSet:
    if not path.is_dir():
        raise _MissingData(f"image folder {path} does not exist or is not a folder")
    base = path / split if (path / split).is_dir() else path
    files = _list_images(base)
    if not files:
        raise _MissingData(f"no images ({', '.join(IMAGE_EXTS)}) found under {base} (searched recursively)")
    # Class = first-level subfolder; images lying directly in the folder are unlabeled.
    classes = sorted({f.relative_to(base).parts[0] for f in files if len(f.relative_to(base).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[f.relative_to(base).parts[0]] if len(f.relative_to(base).parts) > 1 else -1
              for f in files]
    x = _decode_all(files, "L" if channels == 1 else "RGB", (size, size))
    return _make("folder", split, x, labels, files, classes)


# ----------------------------------------------------------------- download

def _download(name: str, root: Path, split: str) -> None:
    try:
        from torchvision import datasets as tvd
        train = split == "train"
        if name == "mnist":
            tvd.MNIST(root, train=train, download=True)
        elif name == "fashion-mnist":
            tvd.FashionMNIST(root, train=train, download=True)
        elif name == "kmnist":
            tvd.KMNIST(root, train=train, download=True)
        elif name == "emnist-letters":
            tvd.EMNIST(root, split="letters", train=train, download=True)
        elif name == "cifar10":
            tvd.CIFAR10(root, train=train, download=True)
    except Exception as e:  # network errors, checksum failures, disk full
        raise DatasetError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}). "
                           f"Without internet, fetch it from {_SOURCES[name]} and place it "
                           f"under {root}.") from None


_LOADERS = {
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion,
    "kmnist": _load_kmnist,
    "emnist-letters": _load_emnist,
    "cifar10": _load_cifar,
}
