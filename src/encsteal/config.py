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

from encsteal.augment import COLOR_STRENGTH, MAX_COLOR_STRENGTH
from encsteal.defenses import DefenseConfig
from encsteal.errors import EncstealError


class ConfigError(EncstealError, ValueError):
    """A config that cannot be used; the message names the key and says what to do."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_of(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} '{value}' (known: {', '.join(registry)})")
    return value


# Registry names are checked when the config is read, not an hour later when a stage first needs them.
# (The registries are imported lazily: their modules import this one.)


def _architecture(value: str) -> str:
    from encsteal.models import ARCHITECTURES

    return _one_of(value, ARCHITECTURES, "architecture")


def _dataset(value: str | None) -> str | None:
    from encsteal.data import DATASETS

    return value if value is None else _one_of(value, DATASETS, "dataset")


def _augmentations(value: list[str]) -> list[str]:
    from encsteal.augment import AUGMENTATIONS

    for name in value:
        _one_of(name, AUGMENTATIONS, "augmentation")
    return value


class DataConfig(Section):
    root: Path | None = None
    """Folder holding torchvision-layout datasets (CIFAR10/, STL10/, ...); default: $ENCSTEAL_DATA, then ./data."""
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

    @field_validator("method")
    @classmethod
    def _check_method(cls, value: str) -> str:
        from encsteal.pretrain import PRETRAINERS

        return _one_of(value, PRETRAINERS, "pre-training method")

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
    checkpoint and steals over HTTP; http: a running API at `url`."""

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

    @model_validator(mode="after")
    def _check_kind(self) -> TargetConfig:
        if self.kind == "http" and not self.url:
            raise ValueError("kind 'http' needs target.url (e.g. http://127.0.0.1:8000)")
        if self.kind != "http" and (self.url or self.api_key):
            raise ValueError(f"target.url and target.api_key are for kind 'http', not '{self.kind}'")
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
    """A number of images, or a share of the pre-training set such as "5%"."""

    _check_dataset = field_validator("dataset")(_dataset)

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1 image")
            return value
        if not re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
            raise ValueError(f"{value!r} is neither a number of images nor a percentage such as '5%'")
        if not 0 < float(value.strip()[:-1]) <= 100:
            raise ValueError(f"{value!r}: a percentage must lie in (0, 100]")
        return value.strip()

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
        """The number of surrogate images (= queries for StolenEncoder)."""
        if isinstance(self.size, int):
            return self.size
        return max(1, round(pretrain_size * float(self.size[:-1]) / 100))


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
    """Temperature of the contrastive losses (infonce, nt-xent, soft-nn, supcon) and of surrogate-pretrain."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        from encsteal.attacks import ATTACKS

        return _one_of(value, ATTACKS, "attack")

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value: str) -> str:
        from encsteal.losses import STEALING_LOSSES

        return _one_of(value, STEALING_LOSSES, "stealing loss")

    _check_arch = field_validator("arch")(_architecture)
    _check_augment = field_validator("augment")(_augmentations)


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


class EvaluateConfig(Section):
    downstream: list[DownstreamConfig] = [DownstreamConfig(dataset="fashion-mnist")]
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


def _defense_names() -> set[str]:
    from encsteal.defenses import DEFENSES

    return set(DEFENSES)


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for error in exc.errors():
        # (the defenses' union adds its tag, e.g. 'top-k', to the location: leave it out)
        key = ".".join(str(part) for part in error["loc"] if part not in _defense_names()) or "(top level)"
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
