"""The experiment config: a typed tree, loaded from a YAML preset and `key=value` overrides.

    cfg = load_config("demo", ["attack.epochs=5", "surrogate.size=500"])

Every section forbids unknown keys, so a typo is an error that names the key instead of a setting that
silently does nothing. Values in overrides are parsed as YAML (`attack.lam=0`, `target.checkpoint=null`,
`attack.augment=[horizontal_flip,grayscale]`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from encsteal.augment import AUGMENTATIONS, COLOR_STRENGTH, CROP_SCALE, MAX_COLOR_STRENGTH
from encsteal.data import DatasetError, dataset_source
from encsteal.defenses import DEFENSES, DefenseConfig
from encsteal.errors import ConfigError  # also encsteal.config.ConfigError, where users have always found it
from encsteal.losses import STEALING_LOSSES
from encsteal.models import ARCHITECTURES

PRETRAIN_METHODS = ("simclr", "moco")
"""The names in encsteal.pretrain.PRETRAINERS, and ATTACK_NAMES those in encsteal.attacks.ATTACKS. The pre-trainers
and attacks read this config, so it names them instead of importing them (the stairs go one way); a test keeps
each registry and its names equal."""
ATTACK_NAMES = ("stolenencoder", "stolenencoder-query-aug", "surrogate-pretrain", "rda")
Wire = Literal["native", "openai", "openai-messages", "cohere", "clarifai"]
"""The dialects of the attacker's client: native, and the names in encsteal.service.dialects.WIRES (a test keeps
them equal)."""
SELECTION_NAMES = ("random", "k-center", "clusters", "uncertainty")
"""The names in encsteal.attacks.selection.SELECTIONS; EMBEDDING_SELECTIONS need the attacker's SimCLR encoder of
its pool."""
EMBEDDING_SELECTIONS = ("k-center", "clusters")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_of(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} '{value}' (known: {', '.join(registry)})")
    return value


# Registry names are checked when the config is read, not an hour later when a stage first needs them.


def _architecture(value: str) -> str:
    return _one_of(value, ARCHITECTURES, "architecture")


def _dataset(value: str | None) -> str | None:
    """A registered dataset name, or folder:PATH (a folder of PNG/JPEG images, encsteal.data.folder)."""
    if value is not None:
        try:
            dataset_source(value)
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
    return value


def _pretrain_method(value: str) -> str:
    return _one_of(value, PRETRAIN_METHODS, "pre-training method")


def _attack(value: str) -> str:
    return _one_of(value, ATTACK_NAMES, "attack")


def _stealing_loss(value: str) -> str:
    return _one_of(value, STEALING_LOSSES, "stealing loss")


def _augmentations(value: list[str]) -> list[str]:
    for name in value:
        _one_of(name, AUGMENTATIONS, "augmentation")
    return value


class DataConfig(Section):
    root: Path | None = None
    """Folder holding torchvision-layout datasets (CIFAR10/, STL10/, ...) and the relative paths of folder:PATH
    datasets; default: $ENCSTEAL_DATA, then ./data."""
    image_size: int = Field(32, ge=8)
    """Every image is resized to image_size x image_size and held as uint8 with 3 channels."""

    def resolved_root(self) -> Path:
        if self.root is not None:
            return self.root
        return Path(os.environ.get("ENCSTEAL_DATA", "data"))


Optimizer = Literal["adam", "sgd", "lars"]
"""adam (the papers'), sgd with momentum, or lars (SimCLR's own: SGD with a per-layer learning rate)."""


class PretrainConfig(Section):
    """How the provider pre-trains its target encoder (StolenEncoder §V-A: SimCLR, ResNet18, Adam 1e-3, 1000 epochs)."""

    method: str = "simclr"
    dataset: str = "fashion-mnist"
    split: str = "train"
    limit: int | None = Field(None, ge=1)
    """Use this many images of the split (a seeded random subset) instead of all of them."""
    arch: str = "resnet18"
    stem: Literal["cifar", "half", "imagenet"] = "cifar"
    epochs: int = Field(1000, ge=0)
    batch_size: int = Field(256, ge=2)
    optimizer: Optimizer = "adam"
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant (the paper's Adam at lr), or cosine decay from lr towards 0 over all steps."""
    warmup_epochs: int = Field(0, ge=0)
    """Ramp the learning rate linearly from 0 to lr over this many epochs first; the schedule follows."""
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """Momentum of sgd and lars; unused by adam."""
    temperature: float = Field(0.5, gt=0)
    projection_dim: int = Field(128, ge=1)
    augment: list[str] = ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]
    color_strength: float = Field(COLOR_STRENGTH, ge=0, le=MAX_COLOR_STRENGTH)
    """SimCLR's colour distortion strength s: the colour jitter's brightness, contrast and saturation 0.8 s, hue
    0.2 s. 0.5 gives the paper's 0.4, 0.4, 0.4, 0.1 (SimCLR's CIFAR-10 setting; 1 on ImageNet)."""
    view_size: int | None = Field(None, ge=8)
    """The side of the augmented views the encoder trains on (the crop's output); None: the images' own size.
    Smaller views cost less per step (FixRes, Touvron et al. 2019: a random crop enlarges objects, so
    training below the test resolution keeps their apparent size); the encoder is used at the images' size."""
    small_views: int = Field(0, ge=0)
    """Multi-crop (SwAV, Caron et al. 2020; simclr only): this many extra small crops of each image, each paired
    with both full views (encsteal.losses.multi_crop_nt_xent). Two full views at 24 and two small ones at 16 take
    about the time of two full views at 32 (a ResNet18 on 2 CPU cores); four small ones take a third more."""
    small_view_size: int = Field(16, ge=8)
    """The side of the small crops, which cover 5-20 % of the image (augment.SMALL_CROP_SCALE)."""
    moco_queue: int = Field(4096, ge=1)
    moco_momentum: float = Field(0.99, ge=0, lt=1)
    watermark: Literal["rotation"] | None = None
    """Embed an ownership watermark while pre-training (encsteal.ownership.watermark): rotation, a secret head learns
    to tell how far each watermark image was turned, and the encoder with it. None: no watermark."""
    watermark_seed: int | None = None
    """The watermark's secret: it chooses the watermark images among the pre-training images and initialises the head."""
    watermark_images: int = Field(1000, ge=1)
    """Pre-training images in the watermark set."""
    watermark_weight: float = Field(1.0, gt=0)
    """w in L = L_ssl + w · L_watermark."""

    _check_method = field_validator("method")(_pretrain_method)
    _check_arch = field_validator("arch")(_architecture)
    _check_dataset = field_validator("dataset")(_dataset)
    _check_augment = field_validator("augment")(_augmentations)

    def recipe(self) -> dict:
        """These settings as recorded beside a target's checkpoint. A setting added after checkpoints were made
        is left out while at its default, so that those checkpoints still match their presets."""
        unset = {"view_size"} if self.view_size is None else set()
        if self.color_strength == COLOR_STRENGTH:
            unset.add("color_strength")
        if self.optimizer == "adam":
            unset |= {"optimizer", "momentum"}
        if self.warmup_epochs == 0:
            unset.add("warmup_epochs")
        if self.small_views == 0:
            unset |= {"small_views", "small_view_size"}
        if self.watermark is None:
            unset |= {"watermark", "watermark_seed", "watermark_images", "watermark_weight"}
        return self.model_dump(mode="json", exclude=unset or None)

    @model_validator(mode="after")
    def _check_crops(self) -> PretrainConfig:
        if self.view_size is not None and "random_resized_crop" not in self.augment:
            raise ValueError("pretrain.view_size sets the crop's output size: it needs random_resized_crop in pretrain.augment")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"pretrain.warmup_epochs ({self.warmup_epochs}) is more than pretrain.epochs ({self.epochs})")
        if self.small_views:
            if "random_resized_crop" not in self.augment:
                raise ValueError("pretrain.small_views are small crops: they need random_resized_crop in pretrain.augment")
            if self.method != "simclr":
                raise ValueError(f"pretrain.small_views (multi-crop) is implemented for simclr, not {self.method}")
        if self.watermark is not None and self.watermark_seed is None:
            raise ValueError("pretrain.watermark needs pretrain.watermark_seed, a secret number that chooses the "
                             "watermark images and initialises its head")
        return self


class TargetConfig(Section):
    """Where the attacker's queries go, and the provider's defenses.

    local: the encoder in this process; served: the run starts the embedding API on 127.0.0.1 from the
    checkpoint and steals over HTTP; http: a running API at `url`, encsteal's or another service's (`wire`)."""

    kind: Literal["local", "served", "http"] = "local"
    checkpoint: Path | None = None
    """The target encoder (.safetensors); None pre-trains one into the run directory. With kind=http it is
    used only to measure TA (the attacker of a real API has none: then set evaluate.downstream=[])."""
    defenses: list[DefenseConfig] = []
    """Post-processors on every answer, in order (top-k, rounding, noise, poisoning). With kind=http the remote
    server applies its own; list them here so that TA is measured on the features the API returns."""
    url: str | None = None
    """kind=http: the API's base URL, e.g. http://127.0.0.1:8000."""
    api_key: SecretStr | None = None
    """kind=http: the API key; better left out of files and given through the environment (api_key_env)."""
    api_key_env: str = "ENCSTEAL_API_KEY"
    price: float = Field(0.0, ge=0)
    """kind=served: the price per query of the account the run opens."""
    query_batch_size: int = Field(256, ge=1)
    """Images per request; the query cache is written after every request."""
    query_cache: Path | None = None
    """The query cache (SQLite); default <run_dir>/queries.sqlite. Runs against the same target may share one."""
    wire: Wire = "native"
    """The dialect the client speaks (kinds served and http): native (encsteal's own), openai (url: the base URL
    with /v1, as the openai client's), openai-messages (one image per request as a chat message, as vLLM takes
    them), cohere (url: the host), clarifai (url: the model's URL, .../models/M[/versions/V]).
    A served run speaks it to encsteal's own server (all but clarifai)."""
    model: str | None = None
    """The model asked for by the openai and cohere wires; None: the one model the service lists (GET /models
    under the base URL), if it lists one."""
    encoding_format: Literal["float", "base64"] | None = None
    """How the openai and cohere wires ask for embeddings; None: as their SDKs do (openai base64, cohere float)."""
    extra_body: dict[str, Any] = {}
    """Fields added to every request of the openai, cohere and clarifai wires (e.g. {modality: image} for
    Infinity, or a Clarifai model's output_info)."""
    accounts: int = Field(1, ge=1)
    """The attacker's accounts (sybils): its requests go to them in turn. Account-aware defenses (B4B) answer each
    in its own way; the others answer all alike."""

    @model_validator(mode="after")
    def _check_kind(self) -> TargetConfig:
        if self.kind == "http" and not self.url:
            raise ValueError("kind 'http' needs target.url (e.g. http://127.0.0.1:8000)")
        if self.kind == "http" and self.accounts > 1:
            raise ValueError("target.accounts > 1 needs kind local or served (kind http has one API key)")
        if self.kind != "http" and (self.url or self.api_key):
            raise ValueError(f"target.url and target.api_key are for kind 'http', not '{self.kind}'")
        if self.kind == "local" and self.wire != "native":
            raise ValueError("target.wire is for kinds served and http (a local target has no wire)")
        if self.kind == "served" and self.wire == "clarifai":
            raise ValueError("encsteal's own server does not speak the clarifai wire: use kind http with a Clarifai "
                             "model URL")
        if self.wire != "native" and any(defense.name == "pow" for defense in self.defenses):
            raise ValueError("the proof-of-work defense needs the native wire: other services' clients solve no "
                             "puzzles (target.wire=native)")
        if self.wire == "native" and (self.model or self.encoding_format or self.extra_body):
            raise ValueError("target.model, target.encoding_format and target.extra_body are for the other wires "
                             "(target.wire), not native")
        return self

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env)


SurrogateScenario = Literal["subset", "same-distribution", "different-distribution"]


class SurrogateConfig(Section):
    """The attacker's unlabeled images, in the paper's three scenarios (StolenEncoder §III)."""

    scenario: SurrogateScenario = "different-distribution"
    dataset: str | None = None
    """Required for different-distribution; the others draw from the pre-training dataset."""
    split: str | None = None
    """Default: the pre-training split (subset), "test" (same-distribution), "train" (different-distribution)."""
    size: int | str = "5%"
    """The query budget: a number of images, or a share of the pre-training set such as "5%". An attack that buys
    several features per image (attack.bought_views, rda's attack.prototype_views) buys them for size / that many
    images, so that every image the target embeds counts against the same budget."""
    pool: int | str | None = None
    """The unlabeled images the attacker holds, bought or not: a number, or a share of the pre-training set; None:
    just the images it buys. The images bought are chosen from the pool (`selection`); attacks may also learn from
    the unbought ones (attack.init=pool-simclr, attack.unbought_weight). Every pool image of a downstream test split
    is kept out of its test set."""
    selection: str = "random"
    """Which images of the pool to buy (encsteal.attacks.selection): random, k-center (a coreset in the attacker's
    own SimCLR embedding of the pool), clusters (k-means in that embedding, every cluster an equal share) or
    uncertainty (in `rounds` rounds, the pool images the copy trained so far is least sure of)."""
    rounds: int = Field(4, ge=1)
    """selection=uncertainty: buy the budget in this many equal rounds, training the copy between them."""
    grayscale: bool = False
    """Turn the pool's images gray (ITU-R 601 luma in all three channels) before anything else: an attacker who
    knows the target serves grayscale images (Fashion-MNIST's) buys and trains on images of that kind."""

    _check_dataset = field_validator("dataset")(_dataset)

    @field_validator("selection")
    @classmethod
    def _check_selection(cls, value: str) -> str:
        return _one_of(value, SELECTION_NAMES, "selection")

    @field_validator("size", "pool")
    @classmethod
    def _check_size(cls, value: int | str | None) -> int | str | None:
        if value is None:
            return value
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1 image")
            return value
        if not re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
            raise ValueError(f"{value!r} is neither a number of images nor a percentage such as '5%'")
        if not 0 < float(value.strip()[:-1]) <= 100:
            raise ValueError(f"{value!r}: a percentage must lie in (0, 100]")
        return value.strip()

    def recipe(self) -> dict:
        """These settings as recorded beside a stolen encoder; the pool and selection settings are left out while at
        their defaults, so that copies made before they existed still match their presets."""
        unset = set()
        if self.pool is None:
            unset.add("pool")
        if self.selection == "random":
            unset.add("selection")
        if self.rounds == SurrogateConfig.model_fields["rounds"].default:
            unset.add("rounds")
        if not self.grayscale:
            unset.add("grayscale")
        return self.model_dump(mode="json", exclude=unset or None)

    @model_validator(mode="after")
    def _check_source(self) -> SurrogateConfig:
        if self.scenario == "different-distribution" and self.dataset is None:
            raise ValueError("scenario 'different-distribution' needs surrogate.dataset (e.g. natural-crops)")
        if self.scenario != "different-distribution" and self.dataset is not None:
            raise ValueError(
                f"scenario '{self.scenario}' draws from the pre-training dataset; remove surrogate.dataset"
            )
        return self

    def count(self, pretrain_size: int) -> int:
        """The query budget: the number of surrogate images StolenEncoder buys."""
        return _images(self.size, pretrain_size)

    def pool_count(self, pretrain_size: int, bought: int) -> int:
        """The number of images the attacker holds, `bought` of them to be bought."""
        return bought if self.pool is None else _images(self.pool, pretrain_size)


def _images(size: int | str, pretrain_size: int) -> int:
    """A number of images, or a share ("5%") of the pre-training set's."""
    if isinstance(size, int):
        return size
    return max(1, round(pretrain_size * float(size[:-1]) / 100))


CropScale = tuple[float, float]


def _crop_scale(value: CropScale) -> CropScale:
    low, high = value
    if not 0 < low <= high <= 1:
        raise ValueError(f"a crop scale is (low, high) with 0 < low <= high <= 1, got {list(value)}")
    return value


class PoolSimclrConfig(Section):
    """The attacker's own encoder of its pool: SimCLR (Chen et al. 2020) on every pool image, bought or not, with the
    copy's architecture; no query. It starts the copy (attack.init=pool-simclr) and embeds the pool for the
    k-center and clusters selections."""

    epochs: int = Field(0, ge=0)
    """0: none."""
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    """Adam, cosine decay."""
    temperature: float = Field(0.2, gt=0)
    color_strength: float = Field(COLOR_STRENGTH, ge=0, le=MAX_COLOR_STRENGTH)
    augment: list[str] = ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]
    cache: Path | None = None
    """A folder of pool encoders, each reused by every run with the same pool, settings and seed (a sweep's runs
    share one: <runs_dir>/caches/pool-encoders); None: the run directory. Where it lies is no part of a recipe."""

    _check_augment = field_validator("augment")(_augmentations)


class AdaptiveConfig(Section):
    """The attacker adapting to the defense it faces (encsteal.attacks.adaptive). Every option is off by default.
    Sybil accounts that split the budget are target.accounts."""

    align_anchors: int = Field(0, ge=0)
    """Against per-account transformations (B4B): query this many of the attacker's images (the anchors) through
    every account first, and map each account's answers into the first account's space by an affine map fitted on
    the anchors (least squares); 0: off. The anchors' queries count, through every account."""
    repeats: int = Field(1, ge=1)
    """Against noise drawn per image: ask each image this many times as near-duplicates (each pixel moved by at
    most `jitter`, the first copy unchanged) and average the answers. Costs `repeats` queries per image: the budget
    buys size / repeats images."""
    jitter: int = Field(2, ge=1, le=32)
    """The largest change of a pixel (0-255) in a near-duplicate."""
    account_queries: int | None = Field(None, ge=1)
    """Against per-account thresholds (detection, B4B's coverage): each account sends at most this many images,
    then a fresh account takes over (as many as the budget needs; in-process targets). None: off."""
    mix: float = Field(0.0, ge=0, le=10)
    """Against distance tests (PRADA): this many benign-looking cover images per attack image, mixed into every
    request (answers discarded, queries paid)."""
    cover: str = "natural-crops"
    """The dataset (train split) the cover images are drawn from."""
    recover: Literal["none", "pca"] = "none"
    """Recover clean features from perturbed ones before training: pca projects the answers onto the principal
    components that stand above the noise floor, each shrunk by its share of signal (encsteal.attacks.adaptive)."""

    _check_cover = field_validator("cover")(_dataset)

    def below_cache(self) -> dict:
        """The settings that change what the query cache holds (the accounts' streams, the aligned answers): runs
        sharing a cache must agree on them. Averaging and recovery work above the cache, on answers it keeps."""
        out: dict = {}
        if self.align_anchors:
            out["align_anchors"] = self.align_anchors
        if self.account_queries is not None:
            out["account_queries"] = self.account_queries
        if self.mix:
            out.update(mix=self.mix, cover=self.cover)
        return out


class AttackConfig(Section):
    """The attacker's training (StolenEncoder §V-A defaults: ResNet34, l2, lambda=20, 100 epochs, Adam 1e-3, batch 64)."""

    name: str = "stolenencoder"
    arch: str = "resnet34"
    stem: Literal["cifar", "half", "imagenet"] = "cifar"
    loss: str = "l2"
    """d in L = L1 + λ·L2: a distance (l2, l1, cosine) or any stealing loss (mse, infonce, nt-xent, soft-nn,
    supcon, wasserstein, barlow, barlow-halves; see encsteal.losses)."""
    clean_weight: float = Field(1.0, ge=0)
    """Weight of L1, the loss on the clean images (Cont-Steal uses only augmented views: 0)."""
    lam: float = Field(20.0, ge=0)
    """Weight of L2 (augmented views); 0 is the paper's StolenEncoder-w/o-aug."""
    views: int = Field(1, ge=1)
    """Augmented views per image, each weighted lam/views (the official code's k)."""
    normalize_features: bool = False
    """L2-normalise target and stolen features before the distance (the official code does)."""
    augment: list[str] = ["horizontal_flip", "color_jitter", "grayscale"]
    epochs: int = Field(100, ge=0)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant (the paper's Adam at lr), or cosine decay from lr towards 0 over all steps."""
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer = "adam"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """Momentum of sgd and lars; unused by adam."""
    temperature: float = Field(0.5, gt=0)
    """Temperature of the contrastive losses (infonce, nt-xent, soft-nn, supcon), of surrogate-pretrain and of rda."""
    crop_scale: CropScale = CROP_SCALE
    """The range of area shares of random_resized_crop in `augment` (the views the copy trains on)."""
    bought_views: int = Field(0, ge=0)
    """stolenencoder: buy k augmented views of every image once (`bought_augment`) and train on each view with the
    feature bought for it, as on one more image: (1 + k) queries per image, so the budget buys size / (1 + k) images."""
    bought_augment: list[str] = ["random_resized_crop", "horizontal_flip", "color_jitter", "grayscale"]
    """The augmentations of the views an attack buys (stolenencoder's bought_views, rda's prototype views)."""
    bought_crop_scale: CropScale = CROP_SCALE
    """The crop's range of area shares in the bought views."""
    prototype_views: int = Field(10, ge=1)
    """rda: the features bought per image, of the clean image and prototype_views - 1 augmented views, averaged into
    its prototype; the budget buys size / prototype_views images."""
    discriminate_weight: float = Field(1.0, ge=0)
    """rda: α, the weight of the term that tells matched from mismatched embedding-prototype pairs."""
    align_weight: float = Field(1.0, ge=0)
    """rda: β, the weight of the term that aligns matched pairs in angle and amplitude."""
    init: Literal["random", "pool-simclr"] = "random"
    """The copy's starting weights: a random init, or the attacker's SimCLR encoder of its pool (`pool_simclr`)."""
    pool_simclr: PoolSimclrConfig = PoolSimclrConfig()
    unbought_weight: float = Field(0.0, ge=0)
    """μ: with unbought pool images, add μ times SimCLR's NT-Xent between two views of each of a batch of them,
    through a projection head on the copy (self-supervised consistency on what was not bought); 0: unused."""

    adaptive: AdaptiveConfig = AdaptiveConfig()
    """The attacker adapting to the defense (sybils aligned, noise averaged, thresholds avoided, features recovered)."""

    _check_crop_scales = field_validator("crop_scale", "bought_crop_scale")(_crop_scale)

    _check_name = field_validator("name")(_attack)
    _check_loss = field_validator("loss")(_stealing_loss)
    _check_arch = field_validator("arch")(_architecture)
    _check_augment = field_validator("augment", "bought_augment")(_augmentations)

    def recipe(self) -> dict:
        """These settings as recorded beside a stolen encoder: the settings added with the query-efficient attacks are
        left out while at their defaults (copies made before them still match their presets), and the pool
        encoders' cache folder always (it says where things lie, not how they were made)."""
        unset = {key for key in QUERY_EFFICIENCY_KEYS if getattr(self, key) == AttackConfig.model_fields[key].default}
        if self.pool_simclr.model_copy(update={"cache": None}) == PoolSimclrConfig():
            unset.add("pool_simclr")
        tree = self.model_dump(mode="json", exclude=unset or None)
        if "pool_simclr" in tree:
            tree["pool_simclr"].pop("cache")
        if "adaptive" in tree:  # its settings at their defaults left out too, so that adding one changes no recipe
            tree["adaptive"] = self.adaptive.model_dump(mode="json", exclude_defaults=True)
        return tree


QUERY_EFFICIENCY_KEYS = ("crop_scale", "bought_views", "bought_augment", "bought_crop_scale", "prototype_views",
                         "discriminate_weight", "align_weight", "init", "pool_simclr", "unbought_weight", "adaptive")
"""Keys left out of the attack's recipe while at their defaults (added after copies were made)."""


class ProbeConfig(Section):
    """The downstream classifier: an MLP on frozen features (StolenEncoder §V-A: 512-256, Adam 1e-4, batch 256, 500 epochs)."""

    hidden: list[int] = [512, 256]
    epochs: int = Field(500, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(256, ge=1)
    features: Literal["standardize", "l2", "raw"] = "standardize"
    """What the MLP is given: standardize, each feature scaled by the training set's mean and std (gives every
    encoder, random ones too, a fair probe); l2, each vector scaled to norm 1, as StolenEncoder's official code
    does; raw, the features as the encoder gives them."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout after the first hidden layer (StolenEncoder's official code: 0.5)."""

    @model_validator(mode="before")
    @classmethod
    def _read_standardize(cls, data: Any) -> Any:
        # run directories written before `features` existed hold standardize: true or false
        if isinstance(data, dict) and "standardize" in data:
            if "features" in data:
                raise ValueError("give features alone: standardize is its older form (true: standardize, false: raw)")
            data = dict(data)
            data["features"] = "standardize" if data.pop("standardize") else "raw"
        return data


class DownstreamConfig(Section):
    dataset: str
    name: str | None = None
    """The task's label in results and reports (default: the dataset's name)."""
    probe: ProbeConfig | None = None
    """This task's own probe instead of evaluate.probe (e.g. a linear one: hidden: [])."""
    train_split: str = "train"
    test_split: str = "test"
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)

    _check_dataset = field_validator("dataset")(_dataset)

    @property
    def label(self) -> str:
        return self.name or self.dataset


class CustomerConfig(Section):
    """A legitimate user of the API, as a workload: it embeds its own labelled images once, through its own
    account, and trains a classifier on what it receives; its utility is that classifier's accuracy (k-fold
    cross-validated over its images), beside the accuracy it would get from the undefended encoder."""

    name: str
    dataset: str
    split: str = "train"
    size: int | None = Field(None, ge=10)
    """Images it embeds (a seeded draw); None: all of the split."""
    classes: list[int] | None = None
    """Only images of these labels (a customer with a narrow task); None: all."""
    folds: int = Field(5, ge=2)
    probe: ProbeConfig | None = None
    """Its classifier (default: evaluate.probe)."""

    _check_dataset = field_validator("dataset")(_dataset)


class EvaluateConfig(Section):
    downstream: list[DownstreamConfig] = [DownstreamConfig(dataset="fashion-mnist")]
    customers: list[CustomerConfig] = []
    """Legitimate users of the defended target, each through its own account: what the defenses cost them."""
    probe: ProbeConfig = ProbeConfig()
    batch_size: int = Field(512, ge=1)
    """Images per forward pass when extracting features."""
    random_inits: int = Field(3, ge=1)
    """Random-init encoders whose mean accuracy is R (one alone varies by a point or more with its seed)."""
    probe_cache: Path | None = None
    """A file of probe accuracies measured before, reused for the same encoder, data, probe and seed (the random
    inits and the target, not the stolen encoder); sweeps share one per runs directory. None: no reuse."""

    @model_validator(mode="after")
    def _unique_labels(self) -> EvaluateConfig:
        labels = [task.label for task in self.downstream]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"downstream tasks need distinct names; give each a name (twice: {', '.join(twice)})")
        names = [customer.name for customer in self.customers]
        if len(set(names)) < len(names):
            raise ValueError("evaluate.customers need distinct names")
        return self


class Config(Section):
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training arithmetic: bf16 runs the trained encoders' forward passes under autocast. It pays on GPUs with
    bf16 and on CPUs with native bf16 instructions (AVX512-BF16, AMX: 1.4x for ResNet18 on 2 cores); elsewhere
    it is slower (`benchmarks/throughput.py --precisions fp32,bf16` tells). Losses and probes stay in fp32."""
    compile: bool = False
    """torch.compile the encoders being trained: a minute or more of compiling first, faster steps on a GPU."""
    run_dir: Path | None = None
    """Default: runs/<name>."""
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    target: TargetConfig = TargetConfig()
    surrogate: SurrogateConfig = SurrogateConfig(dataset="natural-crops")
    attack: AttackConfig = AttackConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name

    @model_validator(mode="after")
    def _check_adaptive(self) -> Config:
        adaptive, target = self.attack.adaptive, self.target
        if adaptive.align_anchors and target.accounts == 1 and adaptive.account_queries is None:
            raise ValueError("attack.adaptive.align_anchors maps several accounts' answers into one space: set "
                             "target.accounts above 1 or attack.adaptive.account_queries")
        if adaptive.account_queries is not None and (target.kind != "local" or target.accounts != 1):
            raise ValueError("attack.adaptive.account_queries opens accounts as it needs them: it needs target.kind "
                             "local and target.accounts 1")
        if (adaptive.align_anchors or adaptive.mix) and target.kind == "http":
            raise ValueError("attack.adaptive.align_anchors and mix run against kinds local and served")
        return self

    @model_validator(mode="after")
    def _check_pool_encoder(self) -> Config:
        needs = [f"surrogate.selection={self.surrogate.selection}"] if self.surrogate.selection in EMBEDDING_SELECTIONS else []
        needs += ["attack.init=pool-simclr"] if self.attack.init == "pool-simclr" else []
        if needs and self.attack.pool_simclr.epochs == 0:
            raise ValueError(f"{' and '.join(needs)} need(s) the attacker's SimCLR encoder of its pool: set "
                             "attack.pool_simclr.epochs (e.g. 50)")
        return self


# --------------------------------------------------------------------------------------------------
# Loading


def presets_dir() -> Path:
    """The shipped presets: inside the installed package, or configs/ of a source checkout."""
    packaged = Path(__file__).parent / "configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "configs"


def find_preset(preset: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped preset such as 'demo' or 'fmnist-bench/target'."""
    path = Path(preset)
    if path.is_file():
        return path
    shipped = presets_dir() / (str(preset) if str(preset).endswith((".yaml", ".yml")) else f"{preset}.yaml")
    if shipped.is_file():
        return shipped
    names = sorted(str(p.relative_to(presets_dir()).with_suffix("")) for p in presets_dir().rglob("*.yaml"))
    raise ConfigError(f"no config file '{preset}' and no shipped preset of that name; presets: {', '.join(names)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. attack.epochs=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def _set_dotted(tree: dict, keys: list[str], value: Any, model: type[BaseModel]) -> None:
    """Set tree[k1][k2]... = value, checking each key against the config schema so typos name themselves."""
    node: Any = tree
    schema: Any = model
    for depth, key in enumerate(keys):
        here = ".".join(keys[: depth + 1])
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"config key '{here}': '{key}' is not an index of a list of {len(node)}")
            index = int(key)
            if last:
                node[index] = value
                return
            node = node[index]
            continue
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            if key not in schema.model_fields:
                known = ", ".join(schema.model_fields)
                raise ConfigError(f"unknown config key '{here}' (known here: {known})")
            annotation = schema.model_fields[key].annotation
            schema = _section_of(annotation)
        if last:
            node[key] = value
            return
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        node = child


def _section_of(annotation: Any) -> Any:
    """The Section class inside an annotation (list[DownstreamConfig] -> DownstreamConfig), if there is exactly
    one; a union of several (the defenses) is left to validation, which names the offending key too."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = {section for arg in getattr(annotation, "__args__", ()) if (section := _section_of(arg)) is not None}
    return found.pop() if len(found) == 1 else None


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for error in exc.errors():
        # (the defenses' union adds its tag, e.g. 'top-k', to the location: leave it out)
        key = ".".join(str(part) for part in error["loc"] if part not in DEFENSES) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"config key '{key}': {error['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def config_from_dict(tree: dict, overrides: list[str] = (), source: str = "config") -> Config:
    tree = dict(tree or {})
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value, Config)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def _merge(base: dict, update: dict) -> dict:
    """Nested dicts merge key by key; any other value (lists included) replaces the base's."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def read_preset(preset: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, Path]:
    """A preset's tree, with `extends: <preset>` resolved (the named preset is the base, this file wins)."""
    path = find_preset(preset)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' goes round in a circle")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, not a {type(tree).__name__}")
    base_name = tree.pop("extends", None)
    if base_name is not None:
        base, _ = read_preset(base_name, (*seen, path.resolve()))
        tree = _merge(base, tree)
    return tree, path


def load_config(preset: str | Path = "demo", overrides: list[str] = ()) -> Config:
    """Load a preset (file path or shipped name) and apply `key=value` overrides."""
    tree, path = read_preset(preset)
    return config_from_dict(tree, list(overrides), source=str(path))


def dump_config(config: Config) -> str:
    """The resolved config as YAML, loadable again with load_config()."""
    tree = config.model_dump(mode="json")
    tree["target"]["api_key"] = None  # a secret never goes to disk; runs read it from target.api_key_env
    return yaml.safe_dump(tree, sort_keys=False)
