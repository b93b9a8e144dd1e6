"""The whole experiment in three stages, each usable on its own from checkpoints:

    pretrain  -> <run_dir>/target.safetensors   (skipped when target.checkpoint is given)
    steal     -> <run_dir>/stolen.safetensors   (queries go through the query cache, <run_dir>/queries.sqlite)
    evaluate  -> <run_dir>/results.json, report.md, summary.png

A stage whose output already exists for the same settings is reused, and a stage killed half-way resumes
from its last epoch, so re-running a command continues a run instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from encsteal.attacks import ATTACKS
from encsteal.checkpoint import load_encoder, save_encoder
from encsteal.config import Config, ConfigError, dump_config
from encsteal.data import load_dataset
from encsteal.data.surrogate import draw, pretraining_images, surrogate_images
from encsteal.defenses import build_defense, describe
from encsteal.defenses.poisoning import PoisoningConfig
from encsteal.distributed import SINGLE, Dist, SharedAnswers, barrier, from_env
from encsteal.errors import EncstealError
from encsteal.evaluate import ProbeCache, evaluate_task
from encsteal.experiments.report import write_report
from encsteal.models import build_encoder
from encsteal.ownership.watermark import embedded_accuracy, save_watermark, watermark_for, watermark_path
from encsteal.pretrain import PRETRAINERS
from encsteal.query_cache import CachedTarget, QueryCache
from encsteal.service.client import HttpTarget
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServeSettings, ServerProcess
from encsteal.target import LocalTarget, Target
from encsteal.training import MetricsLog, TrainContext, keep_freed_memory, resolve_device, seed_everything


class RunDirError(EncstealError):
    pass


@dataclass
class Run:
    """A run directory and what every stage needs from the config."""

    config: Config
    dir: Path
    device: torch.device
    progress: bool
    dist: Dist = SINGLE
    """Under torchrun, this process's rank: every rank trains, rank 0 alone queries, writes and evaluates."""

    @classmethod
    def open(cls, config: Config, progress: bool = True) -> Run:
        device = resolve_device(config.device)
        keep_freed_memory()  # each training step's tensors reuse the last step's memory instead of faulting in new pages
        dist = from_env(device.type)
        if dist.active and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        run_dir = config.resolved_run_dir()
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(config))
        barrier(dist)
        return cls(config, run_dir, device, progress and dist.main, dist)

    @property
    def target_path(self) -> Path:
        return self.config.target.checkpoint or self.dir / "target.safetensors"

    @property
    def stolen_path(self) -> Path:
        return self.dir / "stolen.safetensors"

    def context(self, stage: str, dist: Dist | None = None) -> TrainContext:
        """A training loop's context; `dist=SINGLE` for a loop that rank 0 runs alone."""
        dist = self.dist if dist is None else dist
        return TrainContext(
            device=self.device,
            seed=self.config.seed,
            state_path=self.dir / "state" / f"{stage}.pt",
            log=MetricsLog(self.dir / "metrics.jsonl" if self.dist.main else None),
            progress=self.progress,
            dist=dist,
            precision=self.config.precision,
            compile=self.config.compile,
        )

    def data_kwargs(self) -> dict:
        return {"root": self.config.data.resolved_root(), "image_size": self.config.data.image_size}


def provenance() -> dict:
    """Versions and the source revision, for checkpoint sidecars."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"git_sha": sha, "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reusable(path: Path, recipe: dict, what: str) -> bool:
    """True if `path` exists and was made by the same recipe; an existing output of another recipe is an error."""
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        return False
    made_by = json.loads(sidecar.read_text()).get("recipe")
    if made_by != recipe:
        raise RunDirError(
            f"{path} holds a {what} made with other settings; use a new run_dir (or delete the file) to make another"
        )
    return True


# --------------------------------------------------------------------------------------------------
# Stages


def pretrain(run: Run) -> Path:
    """Pre-train the target encoder (unless target.checkpoint names one); returns its checkpoint path."""
    config = run.config
    if config.target.checkpoint is not None:
        if not config.target.checkpoint.exists():
            raise ConfigError(f"target.checkpoint: {config.target.checkpoint} does not exist")
        return config.target.checkpoint
    recipe = {"pretrain": config.pretrain.recipe(), "data": config.data.model_dump(mode="json", exclude={"root"}), "seed": config.seed}
    if _reusable(run.target_path, recipe, "target encoder"):
        return run.target_path
    seed_everything(config.seed)
    pc = config.pretrain
    images = pretraining_images(pc.dataset, pc.split, pc.limit, config.seed, **run.data_kwargs())
    ctx = run.context("pretrain")
    watermark = watermark_for(pc, images, run.device)
    encoder = PRETRAINERS[pc.method](images, pc, ctx, auxiliary=watermark)
    seconds = ctx.seconds()  # a killed run's seconds count too
    if not run.dist.main:
        barrier(run.dist)  # until rank 0 has written the checkpoint every rank goes on with
        return run.target_path
    if watermark is not None:  # before the checkpoint, whose sidecar marks the whole as finished
        save_watermark(watermark, watermark_path(run.target_path), {"accuracy": embedded_accuracy(watermark, encoder)})
    save_encoder(encoder, run.target_path, {
        "role": "target",
        "recipe": recipe,
        "image_size": config.data.image_size,
        "pretraining_data": {"dataset": pc.dataset, "split": pc.split, "limit": pc.limit, "seed": config.seed, "count": len(images)},
        "epochs": pc.epochs,
        "wall_seconds": seconds,
        "images_per_s": 2 * pc.epochs * len(images) / seconds if seconds else None,
        "processes": run.dist.world,
        **provenance(),
    })
    barrier(run.dist)
    return run.target_path


def _target_encoder(run: Run):
    path = run.target_path
    if not path.exists():
        raise RunDirError(f"no target encoder at {path}: run `encsteal pretrain` first, or set target.checkpoint")
    encoder, meta = load_encoder(path, run.device)
    image_size = meta.get("image_size", run.config.data.image_size)
    if image_size != run.config.data.image_size:
        raise ConfigError(f"data.image_size={run.config.data.image_size} but the target takes {image_size}x{image_size} images")
    return encoder, meta


def defense_configs(run: Run) -> list:
    """target.defenses with every poisoning defense's shadow encoder in place (trained here when missing)."""
    return [_with_shadow(run, config) if isinstance(config, PoisoningConfig) and config.shadow is None else config
            for config in run.config.target.defenses]


def _with_shadow(run: Run, poisoning: PoisoningConfig) -> PoisoningConfig:
    """The provider's shadow stolen encoder of StolenEncoder §VII-C: the attacker's settings, the provider's own
    pre-training images as the surrogate set, queries to the undefended target (the provider's own, free)."""
    config = run.config
    attack = config.attack.model_copy(update={"loss": poisoning.distance, "lam": poisoning.lam, "augment": poisoning.augment})
    recipe = {"shadow_of": file_digest(run.target_path), "attack": attack.model_dump(mode="json"),
              "images": poisoning.shadow_images, "seed": config.seed}
    # beside the target checkpoint: the provider's artefact, shared by every run against that target
    path = run.target_path.parent / f"shadow-{hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]}.safetensors"
    if not _reusable(path, recipe, "shadow encoder"):
        encoder, meta = _target_encoder(run)
        data = meta["pretraining_data"]
        images = pretraining_images(data["dataset"], data["split"], data.get("limit"), data["seed"], **run.data_kwargs())
        if poisoning.shadow_images is not None and poisoning.shadow_images < len(images):
            images = images[draw(poisoning.shadow_images, len(images), config.seed + 5)]
        target = LocalTarget(encoder, image_size=config.data.image_size, device=run.device, batch_size=config.evaluate.batch_size)
        seed_everything(config.seed)
        shadow = ATTACKS["stolenencoder"](target, images, attack, run.context(path.stem, SINGLE))  # rank 0 alone
        save_encoder(shadow, path, {"role": "shadow", "recipe": recipe, "image_size": config.data.image_size, **provenance()})
    return poisoning.model_copy(update={"shadow": path})


def _load_target(run: Run) -> tuple[LocalTarget, dict]:
    """The target with its defenses, in this process: what TA is measured on, and the local attack's victim."""
    encoder, meta = _target_encoder(run)
    size = run.config.data.image_size
    defenses = [build_defense(config, run.device, size) for config in defense_configs(run)]
    return LocalTarget(encoder, image_size=size, device=run.device, batch_size=run.config.evaluate.batch_size,
                       defenses=defenses), meta


@contextmanager
def _victim(run: Run) -> Iterator[tuple[Target, str, Callable[[], float | None]]]:
    """The attack's target for target.kind, its identity (the query cache's key) and a function giving the
    money spent so far (None where nothing is billed)."""
    config = run.config
    kind = config.target.kind
    if kind == "local":
        target, _ = _load_target(run)
        yield target, f"local:{file_digest(run.target_path)}|{describe(config.target.defenses)}", lambda: None
        return
    if kind == "http":
        client = HttpTarget(config.target.url, config.target.resolved_api_key() or "", batch_size=config.target.query_batch_size)
        try:
            yield client, f"http:{client.model_id}", lambda: client.usage()["spent"]
        finally:
            client.close()
        return
    # served: the provider's API in a child process, with an account for this run
    settings = ServeSettings(checkpoint=run.target_path, db=str(run.dir / "service.sqlite"), defenses=defense_configs(run))
    key_file = run.dir / "api_key"
    if not key_file.exists():
        key_file.write_text(Ledger(settings.db).create_account("attacker", price=config.target.price) + "\n")
        key_file.chmod(0o600)
    with ServerProcess(settings) as server:
        client = HttpTarget(server.url, key_file.read_text().strip(), batch_size=config.target.query_batch_size)
        try:
            yield client, f"http:{client.model_id}", lambda: client.usage()["spent"]
        finally:
            client.close()


def _surrogate_labels(record: dict, run: Run) -> torch.Tensor | None:
    """The surrogate images' labels where their dataset has them (used only by label-using losses)."""
    labels = load_dataset(record["dataset"], record["split"], **run.data_kwargs()).labels
    return None if labels is None else labels[record["indices"]]


def steal(run: Run) -> Path:
    """Steal the target with the configured attack; returns the stolen encoder's checkpoint path."""
    config = run.config
    remote_only = config.target.kind == "http" and not run.target_path.exists()
    target_meta = {} if remote_only else _target_encoder(run)[1]
    recipe = {"attack": config.attack.model_dump(mode="json"), "surrogate": config.surrogate.model_dump(mode="json"),
              "target": {"kind": config.target.kind, "checkpoint": None if remote_only else file_digest(run.target_path),
                         "url": config.target.url, "defenses": describe(config.target.defenses)},
              "seed": config.seed}
    if _reusable(run.stolen_path, recipe, "stolen encoder"):
        return run.stolen_path
    seed_everything(config.seed)
    surrogate, surrogate_record = surrogate_images(
        config.surrogate, target_meta.get("pretraining_data"), config.seed, **run.data_kwargs()
    )
    labels = _surrogate_labels(surrogate_record, run)
    if not run.dist.main:  # under torchrun: train on the answers rank 0 buys
        ATTACKS[config.attack.name](SharedAnswers(None, run.dist), surrogate, config.attack, run.context("steal"),
                                    labels=labels)
        barrier(run.dist)  # until rank 0 has written the stolen encoder
        return run.stolen_path
    with _victim(run) as (target, target_id, spent):
        cache = QueryCache(config.target.query_cache or run.dir / "queries.sqlite", target_id)
        cached = CachedTarget(target, cache, run=str(run.dir.resolve()), batch_size=config.target.query_batch_size,
                              progress=run.progress)
        ctx = run.context("steal")
        stolen = ATTACKS[config.attack.name](SharedAnswers(cached, run.dist), surrogate, config.attack, ctx,
                                             labels=labels)
        seconds = ctx.seconds()  # a killed run's seconds count too
        cost = spent()
    save_encoder(stolen, run.stolen_path, {
        "role": "stolen",
        "recipe": recipe,
        "image_size": config.data.image_size,
        "surrogate": surrogate_record,
        "queries": cache.asked(str(run.dir.resolve())),
        "queries_this_run": cached.queries,
        "queries_reused": cached.reused,
        "cost": cost,
        "wall_seconds": seconds,
        "processes": run.dist.world,
        **provenance(),
    })
    cache.close()
    barrier(run.dist)
    return run.stolen_path


def _downstream_split(name: str, split: str, limit: int | None, seed: int, run: Run, exclude: list[int] = ()):
    """A labelled split, without the images in `exclude`, then a seeded subset of `limit` of them."""
    data = load_dataset(name, split, **run.data_kwargs())
    if data.labels is None:
        raise ConfigError(f"evaluate.downstream: {name}/{split} has no labels, so no classifier can be trained on it")
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[list(exclude)] = False
    kept = keep.nonzero().flatten()
    if limit is not None and limit < len(kept):
        kept = kept[draw(limit, len(kept), seed)]
    return data.subset(kept) if len(kept) < len(data) else data


def evaluate(run: Run) -> dict:
    """TA, SA, R, SA/TA, captured gain and fidelity on every downstream task; writes results.json and report.md."""
    config = run.config
    # The attacker of a remote API without the target's weights measures SA and R only.
    remote_only = config.target.kind == "http" and not run.target_path.exists()
    target, target_meta = (None, {}) if remote_only else _load_target(run)
    if not run.stolen_path.exists():
        raise RunDirError(f"no stolen encoder at {run.stolen_path}: run `encsteal steal` first")
    stolen, stolen_meta = load_encoder(run.stolen_path, run.device)
    random_seeds = [config.seed + 2 + 1000 * index for index in range(config.evaluate.random_inits)]
    random_inits = []
    for seed in random_seeds:
        torch.manual_seed(seed)
        random_inits.append(build_encoder(config.attack.arch, config.attack.stem, out_dim=stolen.feature_dim).eval())
    size, batch = config.data.image_size, config.evaluate.batch_size
    encoders = {
        **({} if target is None else {"target": target.embed}),
        "stolen": LocalTarget(stolen, image_size=size, device=run.device, batch_size=batch).embed,
        **{f"random-{index}": LocalTarget(encoder, image_size=size, device=run.device, batch_size=batch).embed
           for index, encoder in enumerate(random_inits)},
    }
    # what determines each encoder's features, for the probe cache (the stolen encoder is new in every run)
    identities = {f"random-{index}": f"random:{config.attack.arch}:{config.attack.stem}:{stolen.feature_dim}:"
                                     f"{seed}:torch-{torch.__version__}"
                  for index, seed in enumerate(random_seeds)}
    if target is not None:
        identities["target"] = f"target:{file_digest(run.target_path)}:{describe(config.target.defenses)}"
    probe_cache = ProbeCache(config.evaluate.probe_cache) if config.evaluate.probe_cache is not None else None
    started = time.perf_counter()
    downstream = {}
    surrogate = stolen_meta["surrogate"]
    splits: dict[tuple, object] = {}  # tasks on the same data share its tensors, hence its features
    feature_cache: dict = {}

    def split_of(dataset: str, split: str, limit: int | None, seed: int, exclude: list[int]):
        key = (dataset, split, limit, seed, len(exclude))
        if key not in splits:
            splits[key] = _downstream_split(dataset, split, limit, seed, run, exclude=exclude)
        return splits[key]

    for task in config.evaluate.downstream:
        # Images the attacker queried never count as test images (same-distribution surrogates come from test splits).
        queried = surrogate.get("indices", []) if (surrogate["dataset"], surrogate["split"]) == (task.dataset, task.test_split) else []
        train = split_of(task.dataset, task.train_split, task.train_limit, config.seed + 3, [])
        test = split_of(task.dataset, task.test_split, task.test_limit, config.seed + 4, queried)
        downstream[task.label] = evaluate_task(
            encoders, train.images, train.labels, test.images, test.labels, train.num_classes,
            task.probe or config.evaluate.probe, batch_size=batch, seed=config.seed, device=run.device,
            task=task.label, progress=run.progress, feature_cache=feature_cache, identities=identities,
            probe_cache=probe_cache,
        )
        downstream[task.label]["queried_images_held_out"] = len(queried)
        downstream[task.label]["probe"] = "linear" if not (task.probe or config.evaluate.probe).hidden else \
            "mlp-" + "-".join(map(str, (task.probe or config.evaluate.probe).hidden))
    if probe_cache is not None:
        probe_cache.close()
    results = {
        "name": config.name,
        "downstream": downstream,
        "queries": stolen_meta["queries"],
        "queries_this_run": stolen_meta["queries_this_run"],
        "cost": stolen_meta.get("cost"),
        "defenses": describe(config.target.defenses),
        "target_kind": config.target.kind,
        "pretrain_seconds": target_meta.get("wall_seconds"),
        "steal_seconds": stolen_meta["wall_seconds"],
        "evaluate_seconds": time.perf_counter() - started,
        "pretrain_images_per_s": target_meta.get("images_per_s"),
        "target": None if target is None else {
            "arch": target.encoder.arch, "stem": target.encoder.stem, "checkpoint": str(run.target_path),
            "pretraining_data": target_meta.get("pretraining_data"), "epochs": target_meta.get("epochs")},
        "attack": {"name": config.attack.name, "arch": config.attack.arch, "stem": config.attack.stem,
                   "epochs": config.attack.epochs, "lam": config.attack.lam, "loss": config.attack.loss},
        "surrogate": {key: value for key, value in surrogate.items() if key != "indices"},
        "device": str(run.device),
    }
    (run.dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, run.dir)
    return results


def run_all(config: Config, progress: bool = True) -> dict | None:
    """pretrain -> steal -> evaluate; returns the results (also in <run_dir>/results.json). Under torchrun all
    ranks train and rank 0 alone evaluates; the other ranks return None."""
    run = Run.open(config, progress)
    pretrain(run)
    steal(run)
    return evaluate(run) if run.dist.main else None
