"""The whole experiment in three stages, each usable on its own from checkpoints:

    pretrain  -> <run_dir>/target.safetensors   (skipped when target.checkpoint is given)
    steal     -> <run_dir>/stolen.safetensors   (queries go through the query cache, <run_dir>/queries.sqlite)
    evaluate  -> <run_dir>/results.json, report.md, summary.png

A stage whose output already exists for the same settings is reused, and a stage killed half-way resumes
from its last epoch, so re-running a command continues a run instead of paying for it twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from encsteal.attacks import ATTACKS, QUERIES_PER_IMAGE
from encsteal.attacks.adaptive import KeptAnchors, account_layer, answer_layer, extra_queries, extra_reused
from encsteal.attacks.pool import buy_and_steal
from encsteal.checkpoint import file_digest, load_encoder, provenance, reusable, save_encoder
from encsteal.config import Config, ConfigError, TargetConfig, dump_config
from encsteal.data import load_dataset
from encsteal.data.surrogate import draw, pretraining_images, surrogate_images
from encsteal.defenses import ACCOUNT_AWARE, SimulatedAccounts, build_defense, describe, identity
from encsteal.defenses.coverage import PRETRAINING
from encsteal.defenses.poisoning import PoisoningConfig
from encsteal.distributed import SINGLE, Dist, SharedAnswers, barrier, from_env
from encsteal.errors import EncstealError
from encsteal.evaluate import ProbeCache, evaluate_task
from encsteal.experiments.customers import serve_customer
from encsteal.experiments.report import write_report
from encsteal.models import build_encoder
from encsteal.ownership.watermark import embedded_accuracy, save_watermark, watermark_for, watermark_path
from encsteal.pretrain import PRETRAINERS
from encsteal.query_cache import CachedTarget, QueryCache
from encsteal.service.client import HttpTarget
from encsteal.service.dialects.target import WireTarget, open_target, served_url
from encsteal.service.ledger import Ledger
from encsteal.service.provider import served, with_center, with_shadow
from encsteal.service.server import ServeSettings
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
    served_accounts: list[dict] = field(default_factory=list)
    """After a served steal: what the provider's database holds of the attacker's accounts."""

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

    def context(self, stage: str, recipe: dict, dist: Dist | None = None) -> TrainContext:
        """A training loop's context; `recipe` is the stage's (its epoch state is resumed only under the same);
        `dist=SINGLE` for a loop that rank 0 runs alone."""
        dist = self.dist if dist is None else dist
        return TrainContext(
            device=self.device,
            seed=self.config.seed,
            state_path=self.dir / "state" / f"{stage}.pt",
            recipe=recipe,
            log=MetricsLog(self.dir / "metrics.jsonl" if self.dist.main else None),
            progress=self.progress,
            dist=dist,
            precision=self.config.precision,
            compile=self.config.compile,
        )

    def data_kwargs(self) -> dict:
        return {"root": self.config.data.resolved_root(), "image_size": self.config.data.image_size}


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
    if reusable(run.target_path, recipe, "target encoder"):
        return run.target_path
    seed_everything(config.seed)
    pc = config.pretrain
    images = pretraining_images(pc.dataset, pc.split, pc.limit, config.seed, **run.data_kwargs())
    ctx = run.context("pretrain", recipe)
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
    """target.defenses with every poisoning defense's shadow encoder in place (the provider trains it when missing)
    and every `center: pretraining` replaced by the target's mean-feature file (computed when missing)."""
    config = run.config

    def shadow_context(stage: str, recipe: dict) -> TrainContext:
        return run.context(stage, recipe, SINGLE)  # rank 0 alone

    def resolved(defense):
        if isinstance(defense, PoisoningConfig) and defense.shadow is None:
            return with_shadow(defense, config.attack, run.target_path, seed=config.seed,
                               data_root=config.data.resolved_root(), image_size=config.data.image_size,
                               device=run.device, batch_size=config.evaluate.batch_size, context=shadow_context)
        if isinstance(defense, ACCOUNT_AWARE) and defense.center == PRETRAINING:
            return with_center(defense, run.target_path, data_root=config.data.resolved_root(),
                               image_size=config.data.image_size, device=run.device,
                               batch_size=config.evaluate.batch_size)
        return defense

    return [resolved(defense) for defense in config.target.defenses]


def _load_target(run: Run) -> tuple[LocalTarget, dict, list]:
    """The target with its stateless defenses, in this process (what TA is measured on), its checkpoint's
    sidecar and all the defenses' configs as applied. Account-aware defenses answer accounts: TA is the
    provider's own view without them, and what they cost customers is measured by evaluate.customers."""
    encoder, meta = _target_encoder(run)
    size = run.config.data.image_size
    configs = defense_configs(run)
    defenses = [build_defense(config, run.device, size) for config in configs if not isinstance(config, ACCOUNT_AWARE)]
    return LocalTarget(encoder, image_size=size, device=run.device, batch_size=run.config.evaluate.batch_size,
                       defenses=defenses), meta, configs


def attacker_accounts(count: int) -> list[str]:
    """The names of the attacker's accounts: attacker, attacker-2, ..."""
    return ["attacker"] + [f"attacker-{index}" for index in range(2, count + 1)]


def query_cache_path(run: Run) -> Path:
    return run.config.target.query_cache or run.dir / "queries.sqlite"


def simulated_accounts_path(run: Run) -> Path:
    """Where an in-process run keeps its simulated accounts: beside its query cache, whose answers they made
    (runs sharing the cache share the query stream, hence the accounts)."""
    cache = query_cache_path(run)
    return cache.with_name(cache.stem + ".accounts.json")


def kept_anchors_dir(run: Run) -> Path:
    """Where the attacker's accounts' answers to its alignment anchors are kept, one query cache per account: beside
    the run's query cache (shared as it is)."""
    cache = query_cache_path(run)
    return cache.with_name(cache.stem + ".anchors")


def _local_attack_target(run: Run, adversary: Adversary) -> tuple[Target, str, SimulatedAccounts]:
    """The in-process victim of the attack: one target per attacker account (sybils in turn, or opened as the
    attacker needs them), the defenses' per-account states in simulated accounts; and its identity for the query
    cache."""
    config = run.config
    encoder, _ = _target_encoder(run)
    size = config.data.image_size
    configs = defense_configs(run)
    accounts = SimulatedAccounts(simulated_accounts_path(run))
    defenses = [build_defense(c, run.device, size) for c in configs]

    def open_account(index: int) -> LocalTarget:
        return LocalTarget(encoder, image_size=size, device=run.device, batch_size=config.target.query_batch_size,
                           defenses=defenses, account=attacker_accounts(index + 1)[-1], accounts=accounts)

    suffix = "" if config.target.accounts == 1 else f"|accounts={config.target.accounts}"
    target_id = f"local:{file_digest(run.target_path)}|{identity(configs)}{suffix}{adversary.identity()}"
    return adversary.accounts(open_account, config.target.accounts, target_id), target_id, accounts


@dataclass
class Adversary:
    """What the adaptive attacker (attack.adaptive) brings to its accounts: the anchors it aligns them on (their
    answers kept in `anchors_dir`, for the run `run_id`) and the cover images it mixes in
    (encsteal.attacks.adaptive)."""

    config: Config
    anchors_dir: Path
    run_id: str
    anchors: torch.Tensor | None = None
    cover: torch.Tensor | None = None

    @classmethod
    def of(cls, run: Run, pool: torch.Tensor) -> Adversary:
        adaptive, seed = run.config.attack.adaptive, run.config.seed
        anchors = pool[draw(min(adaptive.align_anchors, len(pool)), len(pool), seed + 13)] \
            if adaptive.align_anchors else None
        cover = load_dataset(adaptive.cover, "train", **run.data_kwargs()).images if adaptive.mix else None
        return cls(run.config, kept_anchors_dir(run), str(run.dir.resolve()), anchors, cover)

    def accounts(self, open_account: Callable[[int], Target], count: int, target_id: str) -> Target:
        """The attacker's accounts as one target; `target_id` is the query cache's key (the anchors' answers are
        kept under it too)."""
        kept = None if self.anchors is None else \
            KeptAnchors(self.anchors_dir, target_id, self.run_id, self.config.target.query_batch_size)
        return account_layer(open_account, count, self.config.attack.adaptive, self.anchors, self.cover,
                             self.config.seed, kept)

    def identity(self) -> str:
        below = self.config.attack.adaptive.below_cache()
        return "" if not below else "|adaptive=" + ",".join(f"{key}={value}" for key, value in below.items())


@contextmanager
def _victim(run: Run, adversary: Adversary) -> Iterator[tuple[Target, str, Callable[[], float | None]]]:
    """The attack's target for target.kind, its identity (the query cache's key) and a function giving the
    money spent so far (None where nothing is billed)."""
    config = run.config
    kind = config.target.kind
    if kind == "local":
        target, target_id, _ = _local_attack_target(run, adversary)
        yield target, target_id, lambda: None
        return
    if kind == "http":
        url, key = config.target.url, config.target.resolved_api_key() or ""
        with _clients(url, [key], config.target, adversary) as victim:
            yield victim
        return
    # served: the provider's API in a child process, with the attacker's accounts for this run
    settings = ServeSettings(checkpoint=run.target_path, db=str(run.dir / "service.sqlite"), defenses=defense_configs(run))
    names = attacker_accounts(config.target.accounts)
    with served(settings, run.dir / "api_key", config.target.price, names) as (url, keys):
        with _clients(served_url(url, config.target.wire), keys, config.target, adversary, ledger_url=url) as victim:
            yield victim
            target = victim[0]
            run.served_accounts = served_figures(run, settings.db, names, account_channels(victim[0]))


def served_figures(run: Run, db: str, names: list[str], clients: list[HttpTarget]) -> list[dict]:
    """What the provider's database holds of the attacker's accounts, and what this run's clients paid in
    proof-of-work (empty without account-aware defenses)."""
    if not any(isinstance(d, ACCOUNT_AWARE) for d in run.config.target.defenses):
        return []
    figures = Ledger(db).defense_figures()
    return [{"account": name, "images": client.queries, "pow_seconds": client.pow_seconds,
             "pow_hashes": client.pow_hashes, "wait_seconds": client.throttle.waited,
             "figures": figures[name].latest if name in figures else {}}
            for name, client in zip(names, clients)]


@contextmanager
def _clients(url: str, keys: list[str], target: TargetConfig, adversary: Adversary, ledger_url: str | None = None
             ) -> Iterator[tuple[Target, str, Callable[[], float | None]]]:
    """The clients of the API at `url` in target.wire, one per key (several: the attacker's sybil accounts, taking
    requests in turn); with their identity and the money spent: the accounts' spending in the ledger of
    encsteal's server at `ledger_url` (a served run, whatever its wire), else what the service reports (None
    where it reports none)."""
    clients = [open_target(url, key, target.wire, model=target.model, encoding_format=target.encoding_format,
                           extra_body=target.extra_body, batch_size=target.query_batch_size) for key in keys]
    ledgers = [] if ledger_url is None else [HttpTarget(ledger_url, key) for key in keys]
    target_id = f"http:{clients[0].model_id}{adversary.identity()}"
    victim = adversary.accounts(lambda index: clients[index], len(clients), target_id)

    def spent() -> float | None:
        amounts = [account.usage()["spent"] for account in (ledgers or clients)]
        return None if any(amount is None for amount in amounts) else sum(amounts)

    try:
        yield victim, target_id, spent
    finally:
        for client in clients + ledgers:
            client.close()


def account_channels(target: Target) -> list[Target]:
    """The attacker's own channel to each of its accounts (an HttpTarget, a LocalTarget), under the adaptive layers."""
    return [getattr(account, "target", account) for account in getattr(target, "targets", [target])]


def billed_units(target: Target) -> dict[str, int] | None:
    """What a service of another wire billed, in its own unit ({"tokens": 1234}); None for the others."""
    clients = account_channels(target)
    if not all(isinstance(client, WireTarget) for client in clients):
        return None
    totals: dict[str, int] = {}
    for client in clients:
        for unit, count in client.billed_units().items():
            totals[unit] = totals.get(unit, 0) + count
    return totals


def _surrogate_labels(record: dict, run: Run) -> torch.Tensor | None:
    """The surrogate images' labels where their dataset has them (used only by label-using losses)."""
    labels = load_dataset(record["dataset"], record["split"], **run.data_kwargs()).labels
    return None if labels is None else labels[record["indices"]]


def steal(run: Run) -> Path:
    """Steal the target with the configured attack; returns the stolen encoder's checkpoint path."""
    config = run.config
    remote_only = config.target.kind == "http" and not run.target_path.exists()
    target_meta = {} if remote_only else _target_encoder(run)[1]
    recipe = {"attack": config.attack.recipe(), "surrogate": config.surrogate.recipe(),
              "target": {"kind": config.target.kind, "checkpoint": None if remote_only else file_digest(run.target_path),
                         "url": config.target.url, "defenses": identity(config.target.defenses),
                         **({"wire": config.target.wire, "model": config.target.model}
                            if config.target.wire != "native" else {}),
                         **({"accounts": config.target.accounts} if config.target.accounts != 1 else {})},
              "seed": config.seed}
    if reusable(run.stolen_path, recipe, "stolen encoder"):
        return run.stolen_path
    seed_everything(config.seed)
    pool, surrogate_record = surrogate_images(
        config.surrogate, target_meta.get("pretraining_data"), config.seed,
        queries_per_image=QUERIES_PER_IMAGE[config.attack.name](config.attack) * config.attack.adaptive.repeats,
        **run.data_kwargs()
    )
    labels = _surrogate_labels(surrogate_record, run)
    encoder_dir = config.attack.pool_simclr.cache or run.dir

    def attack(answers: Target, ctx: TrainContext):
        """Choose what to buy from the pool and steal with it (encsteal.attacks.pool), through the adaptive
        attacker's averaging and recovery (encsteal.attacks.adaptive)."""
        target = answer_layer(answers, config.attack.adaptive, config.seed)
        return buy_and_steal(ATTACKS[config.attack.name], target, pool, labels, surrogate_record["images"],
                             config.attack, config.surrogate, ctx=ctx, context=run.context, encoder_dir=encoder_dir)

    if not run.dist.main:  # under torchrun: train on the answers rank 0 buys
        attack(SharedAnswers(None, run.dist), run.context("steal", recipe))
        barrier(run.dist)  # until rank 0 has written the stolen encoder
        return run.stolen_path
    with _victim(run, Adversary.of(run, pool)) as (target, target_id, spent):
        cache = QueryCache(query_cache_path(run), target_id)
        cached = CachedTarget(target, cache, run=str(run.dir.resolve()), batch_size=config.target.query_batch_size,
                              progress=run.progress)
        ctx = run.context("steal", recipe)
        stolen, bought = attack(SharedAnswers(cached, run.dist), ctx)
        seconds = ctx.seconds()  # a killed run's seconds count too
        cost = spent()
        billed = billed_units(target)
        extra = extra_queries(target)
        extra_bought = extra - extra_reused(target)
        refused = None if cached.refusal is None else {  # the attacker trained on what it had been answered
            **cached.refusal, "images": cached.refusal["images"] + extra, "unanswered": len(cached.unanswered)}
    accounts = attacker_figures(run) if config.target.kind == "local" else run.served_accounts
    if config.surrogate.pool is not None:  # which of the pool was bought (the pool's indices say what it held)
        surrogate_record["bought"] = [surrogate_record["indices"][i] for i in bought.tolist()]
    save_encoder(stolen, run.stolen_path, {
        "role": "stolen",
        "recipe": recipe,
        "image_size": config.data.image_size,
        "surrogate": surrogate_record,
        "queries": cache.asked(str(run.dir.resolve())) + extra,
        **({"queries_adaptive": extra} if extra else {}),
        "queries_this_run": cached.queries + extra_bought,
        "queries_reused": cached.reused + extra - extra_bought,
        "cost": cost,
        **({"billed": billed} if billed is not None else {}),
        "wall_seconds": seconds,
        "processes": run.dist.world,
        **({"accounts": accounts} if accounts else {}),
        **({"refused": refused} if refused else {}),
        **provenance(),
    })
    cache.close()
    barrier(run.dist)
    return run.stolen_path


def attacker_figures(run: Run) -> list[dict]:
    """Per attacker account, what the provider's account-aware defenses hold: images, proof-of-work CPU seconds,
    the seconds its client waited for a throttled rate, the latest figures of every defense (coverage, σ, statistics, flag) and the images the account had sent when a
    defense first flagged it (`flagged_at`, None if never). Empty without such defenses."""
    config = run.config
    if not any(isinstance(d, ACCOUNT_AWARE) for d in config.target.defenses) or config.target.kind != "local":
        return []
    accounts = SimulatedAccounts(simulated_accounts_path(run))
    opened = max(config.target.accounts, len(accounts.accounts))  # paced attackers open accounts as they go
    return [{"account": name, "images": accounts.account(name).images, "pow_seconds": accounts.account(name).pow_seconds,
             "pow_hashes": accounts.account(name).pow_hashes, "wait_seconds": accounts.account(name).wait_seconds,
             "figures": accounts.figures(name), "flagged_at": flagged_at(accounts.account(name).history)}
            for name in attacker_accounts(opened) if name in accounts.accounts]


def flagged_at(history: list[dict]) -> int | None:
    """The images an account had sent when a defense first flagged it (its request included), None if never."""
    images = 0
    for request in history:
        images += request["images"]
        if any(figures.get("flagged") for figures in request["figures"].values()):
            return images
    return None


def customers(run: Run, configs: list) -> list[dict]:
    """evaluate.customers, each through its own account of the defended target (in-process, all defenses)."""
    config = run.config
    if not config.evaluate.customers:
        return []
    encoder, _ = _target_encoder(run)
    size, batch = config.data.image_size, config.target.query_batch_size
    built = [build_defense(c, run.device, size) for c in configs]
    accounts = SimulatedAccounts()

    def defended(account: str) -> LocalTarget:
        return LocalTarget(encoder, image_size=size, device=run.device, batch_size=batch, defenses=built,
                           account=account, accounts=accounts)

    undefended = LocalTarget(encoder, image_size=size, device=run.device, batch_size=config.evaluate.batch_size)
    return [serve_customer(customer, defended, undefended, config.evaluate.probe, root=config.data.resolved_root(),
                           image_size=size, seed=config.seed + 11, device=run.device).as_dict()
            for customer in config.evaluate.customers]


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
    target, target_meta, defenses = (None, {}, []) if remote_only else _load_target(run)
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
        stateless = [d for d in defenses if not isinstance(d, ACCOUNT_AWARE)]  # what TA is measured with
        identities["target"] = f"target:{file_digest(run.target_path)}:{identity(stateless)}"
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
    served_customers = customers(run, defenses) if target is not None else []
    results = {
        "name": config.name,
        "downstream": downstream,
        **({"customers": served_customers} if served_customers else {}),
        **({"attacker_accounts": stolen_meta["accounts"]} if stolen_meta.get("accounts") else {}),
        **({"refused": stolen_meta["refused"]} if stolen_meta.get("refused") else {}),
        "queries": stolen_meta["queries"],
        "queries_this_run": stolen_meta["queries_this_run"],
        "cost": stolen_meta.get("cost"),
        **({"billed": stolen_meta["billed"]} if "billed" in stolen_meta else {}),
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
        "surrogate": {key: value for key, value in surrogate.items() if key not in ("indices", "bought")},
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
