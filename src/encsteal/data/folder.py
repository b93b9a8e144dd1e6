"""Any folder of PNG and JPEG images as a dataset: the images a user brings, as surrogate or downstream data.

    surrogate: {scenario: different-distribution, dataset: "folder:my-photos"}    # <data root>/my-photos
    evaluate: {downstream: [{dataset: "folder:/srv/labelled-shoes"}]}             # an absolute path

A dataset name `folder:PATH` reads PATH (relative to the data root, `data.root` or $ENCSTEAL_DATA, unless
absolute), recursively: every file ending in .png, .jpg or .jpeg, at any depth, in sorted path order.

Labels follow torchvision's ImageFolder: when every image lies in a sub-folder, the first-level sub-folder
is the image's class (classes in sorted name order, numbered from 0); when any image lies in the folder
itself, the set is unlabeled (usable as a surrogate set, not for a downstream probe).

Splits: `all` is every image. A folder holding `train/` and `test/` sub-folders is split by them (labels from
the sub-folders below each; `all` reads both). Any other folder is split at random, seeded, 80 % `train` and
20 % `test`, per class when labelled, so a user's single folder still gives a downstream task.

Images are decoded with Pillow, their transparency (if any) composited onto black, converted to RGB and
resized to data.image_size (bilinear, antialiased; the aspect ratio is not kept, as for every dataset here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from encsteal.data.common import DatasetError, ImageSet, to_images

PREFIX = "folder:"
SPLITS = ("all", "train", "test")
SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_SHARE = 0.2
"""Of a folder without train/ and test/ sub-folders, the share drawn (seeded) as its test split."""
SPLIT_SEED = 0


def is_folder_name(name: str) -> bool:
    return name.startswith(PREFIX)


def folder_of(name: str, root: Path) -> Path:
    """The folder a `folder:PATH` dataset name reads: PATH, under the data root unless absolute."""
    path = Path(name.removeprefix(PREFIX)).expanduser()
    return path if path.is_absolute() else Path(root) / path


def image_files(folder: Path) -> list[Path]:
    """Every PNG/JPEG file below `folder` (any depth, any case of suffix), in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def decode(path: Path) -> np.ndarray:
    """One image file -> uint8 H x W x 3, transparency composited onto black; a file Pillow cannot read is a
    DatasetError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
                return np.rint(rgba[..., :3] * (rgba[..., 3:] / 255)).astype(np.uint8)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path} is not a readable PNG or JPEG image ({exc}); remove it from the folder") from None


def read_images(files: list[Path], image_size: int) -> torch.Tensor:
    """Decode and resize image files into uint8 N x 3 x S x S."""
    out = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    for index, path in enumerate(files):
        out[index] = to_images(decode(path)[None], image_size)[0]
    return out


def _labelled(files: list[Path], base: Path) -> tuple[torch.Tensor | None, list[str]]:
    """ImageFolder's labels: the first-level sub-folder under `base` of every file, or None if any file sits in
    `base` itself."""
    parents = [path.relative_to(base).parts for path in files]
    if any(len(parts) < 2 for parts in parents):
        return None, []
    classes = sorted({parts[0] for parts in parents})
    index = {name: number for number, name in enumerate(classes)}
    return torch.tensor([index[parts[0]] for parts in parents], dtype=torch.int64), classes


def _random_split(labels: torch.Tensor | None, count: int, split: str) -> torch.Tensor:
    """Seeded 80/20 split of `count` images into train and test, per class when labelled (every class of two or
    more images gives at least one test image)."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    groups = [torch.arange(count)] if labels is None else [(labels == c).nonzero().flatten() for c in labels.unique()]
    chosen = []
    for members in groups:
        order = members[torch.randperm(len(members), generator=generator)]
        n_test = max(1, round(TEST_SHARE * len(order))) if len(order) > 1 else 0
        chosen.append(order[:n_test] if split == "test" else order[n_test:])
    return torch.cat(chosen).sort().values


def load_folder(split: str, folder: Path, image_size: int) -> ImageSet:
    """The `split` (all, train or test) of the images below `folder` (see the module docstring)."""
    if not folder.is_dir():
        raise DatasetError(f"no folder {folder}: a dataset 'folder:PATH' reads the images below PATH (relative to "
                           "the data root, data.root or $ENCSTEAL_DATA, unless absolute)")
    by_split = (folder / "train").is_dir() and (folder / "test").is_dir()
    if by_split:
        # classes are numbered over train/ and test/ together, so that both splits' labels agree
        found = {part: image_files(folder / part) for part in ("train", "test")}
        labelled = {part: _labelled(files, folder / part) for part, files in found.items()}
        parts = ("train", "test") if split == "all" else (split,)
        files = [path for part in parts for path in found[part]]
        if not files:
            raise DatasetError(f"no PNG or JPEG images below {folder}/{'/ or '.join(parts)}/")
        if any(labelled[part][0] is None for part in found if found[part]):
            return ImageSet(read_images(files, image_size), None, None)
        names = sorted({name for _, classes in labelled.values() for name in classes})
        labels = torch.tensor([names.index(path.relative_to(folder / part).parts[0]) for part in parts
                               for path in found[part]], dtype=torch.int64)
        return ImageSet(read_images(files, image_size), labels, len(names))
    files = image_files(folder)
    if not files:
        raise DatasetError(f"no PNG or JPEG images (.png, .jpg, .jpeg) below {folder}")
    labels, classes = _labelled(files, folder)
    if split != "all":
        keep = _random_split(labels, len(files), split)
        if len(keep) == 0:
            raise DatasetError(f"{folder} holds too few images for a {split} split; use split 'all'")
        files = [files[i] for i in keep.tolist()]
        labels = None if labels is None else labels[keep]
    return ImageSet(read_images(files, image_size), labels, len(classes) if labels is not None else None)
