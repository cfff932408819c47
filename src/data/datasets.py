"""Where HR images come from: dataset folders under the data root, or scikit-image's bundled photos."""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from src import seeding
from src.data.imageio import IMAGE_SUFFIXES, read_image
from src.data.subimages import SubImage

# scikit-image ships these RGB photos inside its wheel, so a first run needs no download. The held-out ones
# are never cropped for training: chelsea is a colour photo, camera and coins are gray (replicated to RGB).
SAMPLE_TRAIN = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg")
SAMPLE_HOLDOUT = ("chelsea.png", "camera.png", "coins.png")
SAMPLE_SETS = {"skimage": SAMPLE_TRAIN, "skimage_holdout": SAMPLE_HOLDOUT}
DOWNLOADABLE = ("DIV2K_train", "DIV2K_valid", "Flickr2K", "Set5", "Set14", "BSD100", "Urban100", "Manga109")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """`SR_DATA_ROOT` if set, else `../shared/datasets` beside the checkout when it exists, else `./data`."""
    if os.environ.get("SR_DATA_ROOT"):
        return Path(os.environ["SR_DATA_ROOT"]).expanduser()
    shared = repo_root().parent / "shared" / "datasets"
    return shared if shared.is_dir() else repo_root() / "data"


def sample_image_paths(names=SAMPLE_TRAIN) -> list[Path]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return [folder / n for n in names]


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def resolve_set(name: str, root: str | os.PathLike) -> list[Path]:
    """Image paths of a named set: a bundled sample set, or `<root>/<name>/HR`.

    A missing folder is reported with the path that was looked at and how to get the data, so a typo or a
    missing download fails at start rather than after hours of training.
    """
    if name in SAMPLE_SETS:
        return sample_image_paths(SAMPLE_SETS[name])
    folder = Path(root) / name / "HR"
    if not folder.is_dir():
        hint = (f"run `python -m src.data.download {name} root={root}`" if name in DOWNLOADABLE
                else f"put its HR images in {folder}")
        raise FileNotFoundError(
            f"dataset '{name}' not found: {folder} does not exist (data.root={root}; set data.root=... or the "
            f"SR_DATA_ROOT environment variable). To get it, {hint}. Bundled sets that need no download: "
            f"{', '.join(SAMPLE_SETS)}.")
    return list_images(folder)


def _cache_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]


def decoded(path: Path, cache_dir: Path | None) -> np.ndarray:
    """The image as uint8 HWC RGB, decoded once into a memory-mapped .npy so crops cost no PNG decoding."""
    if cache_dir is None:
        return read_image(path)
    npy = Path(cache_dir) / f"{path.stem}-{_cache_key(path)}.npy"
    if not npy.exists():
        tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
        try:
            npy.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, read_image(path))
            os.replace(tmp, npy)
        except OSError as e:  # a read-only or full cache only costs speed: decode every time instead
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            warnings.warn(f"data.cache_dir={cache_dir} is not writable ({e.strerror or e}); decoding images without "
                          f"the cache (slower): set data.cache_dir to a writable folder", RuntimeWarning, stacklevel=2)
            return read_image(path)
    return np.load(npy, mmap_mode="r")


AUGMENTS = ("all8", "hflip", "none")


class HRPatches(Dataset):
    """Random HR crops with flips/rotations; item i is a pure function of (seed, i) (the `crops` stream).

    `augment`: `all8` = a random one of the 8 flips/rotations of the square (the paper's text); `hflip` = a
    horizontal flip with probability 1/2 and no rotation (the official recipe, BasicSR's `use_hflip` without
    `use_rot`); `none`.

    `pad=True` is Real-ESRGAN's crop for degrading (RealESRGANDataset, the official recipe's 400 px): the flip and
    rotation apply to the whole image first, an image smaller than `patch_size` is padded at its bottom and right
    by reflection (OpenCV's BORDER_REFLECT_101, which excludes the edge pixel), then a random `patch_size` crop is
    cut. Images smaller than a patch are then padded, not skipped.

    Making every item a function of its index (instead of a stateful RNG) is what lets a resumed run and a DDP
    rank see exactly the batches an uninterrupted run would: the sampler only has to say where to start.

    Items of `paths` may be `SubImage`s (src/data/subimages.py, `data.subimages`): each counts as one image.
    """

    def __init__(self, paths: list[Path | SubImage], patch_size: int, length: int, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, augment: str = "all8", pad: bool = False):
        if augment not in AUGMENTS:
            raise ValueError(f"data.augment={augment!r}; allowed: {', '.join(AUGMENTS)}")
        self.paths, self.patch_size, self.length, self.seed = list(paths), patch_size, length, seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.augment, self.pad = augment, bool(pad)
        self._images: dict[int, np.ndarray] = {}
        self._stacks: dict[Path, np.ndarray] = {}
        # Decode everything now: an unreadable file fails at start, naming itself, not in a worker hours later.
        # Images smaller than a patch (7 of T91's 91 at x4) cannot give a crop: skip them, loudly (unless padded).
        sizes = {p: self._load(p).shape[:2] for p in self.paths}
        self._stacks = {}  # opened again where items are read (a data loader worker), not copied into it
        small = [] if self.pad else [p for p, (h, w) in sizes.items() if min(h, w) < patch_size]
        if small:
            dropped = set(small)
            self.paths = [p for p in self.paths if p not in dropped]
            if not self.paths:
                raise ValueError(f"every training image is smaller than the HR patch size {patch_size} "
                                 f"(data.lr_patch_size x scale): {', '.join(map(str, small[:5]))}")
            warnings.warn(f"skipping {len(small)} training image(s) smaller than the {patch_size}px HR patch: "
                          f"{', '.join(p.name for p in small)}")

    def __len__(self) -> int:
        return self.length

    def _image(self, k: int) -> np.ndarray:
        if k not in self._images:
            self._images[k] = self._load(self.paths[k])
        return self._images[k]

    def _load(self, item: Path | SubImage) -> np.ndarray:
        if not isinstance(item, SubImage):
            return decoded(item, self.cache_dir)
        if item.file not in self._stacks:  # one memory map per file of sub-images, however many are drawn
            self._stacks[item.file] = np.load(item.file, mmap_mode="r")
        return self._stacks[item.file][item.index]

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = seeding.numpy_rng(self.seed, "crops", index=i)
        img = self._image(int(rng.integers(len(self.paths))))
        if self.pad:
            return _to_tensor(self._padded_crop(img, rng))
        h, w = img.shape[:2]
        top, left = int(rng.integers(h - self.patch_size + 1)), int(rng.integers(w - self.patch_size + 1))
        patch = np.asarray(img[top:top + self.patch_size, left:left + self.patch_size])
        if self.augment != "none" and rng.random() < 0.5:
            patch = patch[:, ::-1]
        if self.augment == "all8":
            patch = np.rot90(patch, int(rng.integers(4)))
        return _to_tensor(patch)

    def _padded_crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.augment != "none" and rng.random() < 0.5:
            img = img[:, ::-1]
        if self.augment == "all8":
            img = np.rot90(img, int(rng.integers(4)))
        img = reflect_pad_to(img, self.patch_size)
        h, w = img.shape[:2]
        top, left = int(rng.integers(h - self.patch_size + 1)), int(rng.integers(w - self.patch_size + 1))
        return img[top:top + self.patch_size, left:left + self.patch_size]


def reflect_pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """`img` (H, W, C) padded at the bottom and right to at least `size` x `size` by reflection without repeating
    the edge pixel (OpenCV's BORDER_REFLECT_101, as Real-ESRGAN pads); unchanged when already large enough."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    if min(h, w) < 2:
        raise ValueError(f"an image of {h}x{w} px cannot be padded by reflection to {size} px")
    return np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")


def _to_tensor(patch: np.ndarray) -> torch.Tensor:
    # uint8 crosses to the device: 4x less to copy than float; the datamodule converts after transfer.
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)


class StepSampler(Sampler[int]):
    """Indices for batches start_step.. of a run, sharded by rank: batch s on rank r uses items of s*world+r.

    A "step" here is one batch of the data loader; with gradient accumulation an optimizer step is several.
    """

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.total_steps, self.batch_size = total_steps, batch_size
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def __len__(self) -> int:
        # The whole run's length even when resuming: Lightning restores its batch counter within the epoch and
        # ends the epoch at len(); a shorter length would end it early and restart the data from start_step.
        return self.total_steps * self.batch_size

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            first = (step * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


class PairedImages(Dataset):
    """Fixed (LR, HR) uint8 pairs for validation, HR cropped at the centre to keep validation cheap."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        lr, hr = self.pairs[i]
        return (torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1),
                torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1))
