"""`encsteal verify`: is a suspect encoder a copy of the victim? Opens the victim and the suspect, runs
`encsteal.ownership.verify`, writes verify.json, verify.md and verify.png.

    encsteal verify --victim runs/demo/target.safetensors --suspect runs/x/stolen.safetensors \
        --public fashion-mnist:test --out runs/verify-x

The suspect is a checkpoint (run here, behind a LocalTarget) or an embedding API's URL (HttpTarget, the API key
from $ENCSTEAL_API_KEY); either way it sits behind a CachedTarget whose query cache lives in the output directory,
so the images sent are counted, capped by --max-queries, and never bought twice. The private images default to
the victim's own pre-training images, as its checkpoint records them; public images of the same split are taken
from outside them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.checkpoint import load_encoder  # noqa: E402
from encsteal.config import ConfigError, DataConfig, parse_override  # noqa: E402
from encsteal.data import load_dataset  # noqa: E402
from encsteal.data.surrogate import pretraining_indices  # noqa: E402
from encsteal.errors import EncstealError  # noqa: E402
from encsteal.models import Encoder, build_encoder  # noqa: E402
from encsteal.ownership.verify import Evidence, Outcome, VerifyConfig, VerifyError, prepare_evidence, verify_suspect  # noqa: E402
from encsteal.ownership.watermark import Watermark, load_watermark, watermark_path  # noqa: E402
from encsteal.query_cache import CachedTarget, QueryCache  # noqa: E402
from encsteal.service.client import HttpTarget  # noqa: E402
from encsteal.target import LocalTarget, Target  # noqa: E402
from encsteal.training import resolve_device  # noqa: E402

API_KEY_ENV = "ENCSTEAL_API_KEY"


def verify_config(overrides: list[str] = (), base: dict | None = None) -> VerifyConfig:
    """VerifyConfig from a mapping and `key=value` overrides (e.g. dataset_inference.components=20)."""
    tree = json.loads(json.dumps(base or {}))
    for text in overrides:
        keys, value = parse_override(text)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"verification setting '{text}': '{key}' is not a section")
        node[keys[-1]] = value
    try:
        return VerifyConfig.model_validate(tree)
    except ValueError as exc:  # pydantic's ValidationError: name the keys
        errors = getattr(exc, "errors", lambda: [])()
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: "
                           f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in errors) or str(exc)
        raise ConfigError(f"verification settings: {detail}") from None


def split_spec(spec: str) -> tuple[str, str | None]:
    """'fashion-mnist:test' -> ('fashion-mnist', 'test'); 'digits' -> ('digits', None)."""
    name, _, split = spec.partition(":")
    return name.strip(), (split.strip() or None)


# --------------------------------------------------------------------------------------------------
# The victim's side


@dataclass
class Victim:
    path: Path
    encoder: Encoder
    meta: dict
    watermark: Watermark | None
    image_size: int

    @property
    def pretraining(self) -> dict | None:
        return self.meta.get("pretraining_data")


def open_victim(path: Path, device: torch.device) -> Victim:
    encoder, meta = load_encoder(Path(path), device)
    marked = watermark_path(path)
    return Victim(Path(path), encoder, meta, load_watermark(marked) if marked.exists() else None,
                  int(meta.get("image_size", 32)))


def private_images(victim: Victim, spec: str | None, root: Path) -> tuple[torch.Tensor, str]:
    """The victim's private training images: by default (or when `spec` names the same dataset and split) exactly
    its recorded pre-training images; otherwise the whole split `spec` names."""
    record = victim.pretraining
    if spec is None:
        if record is None:
            raise VerifyError(f"{victim.path} does not record its pre-training data: give --private DATASET[:split]")
        name, split = record["dataset"], record["split"]
    else:
        name, split = split_spec(spec)
        split = split or "train"
    images = load_dataset(name, split, root=root, image_size=victim.image_size).images
    if record and (record["dataset"], record["split"]) == (name, split):
        chosen = pretraining_indices(len(images), record.get("limit"), record["seed"])
        return images[chosen], f"{name}:{split} (the victim's {len(chosen):,} pre-training images)"
    return images, f"{name}:{split}"


def public_images(victim: Victim, spec: str, root: Path) -> tuple[torch.Tensor, str]:
    """Images the victim never trained on: the split `spec` names, without the victim's pre-training images."""
    name, split = split_spec(spec)
    split = split or "test"
    images = load_dataset(name, split, root=root, image_size=victim.image_size).images
    record = victim.pretraining
    if record and (record["dataset"], record["split"]) == (name, split):
        keep = torch.ones(len(images), dtype=torch.bool)
        keep[pretraining_indices(len(images), record.get("limit"), record["seed"])] = False
        return images[keep], f"{name}:{split} (the {int(keep.sum()):,} images the victim did not train on)"
    return images, f"{name}:{split}"


def reference_encoders(victim: Victim, config: VerifyConfig, device: torch.device) -> dict[str, Target]:
    """The watermark's null: random inits of the victim's architecture and the listed independent checkpoints."""
    references: dict[str, Target] = {}
    spec = victim.encoder
    for index in range(config.watermark.random_references):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(10_007 + index)
            encoder = build_encoder(spec.arch, spec.stem, out_dim=spec.out_dim)
        references[f"random-{spec.arch}-{index}"] = LocalTarget(encoder, image_size=victim.image_size, device=device,
                                                                batch_size=config.batch_size)
    for path in config.watermark.references:
        encoder, _ = load_encoder(path, device)
        references[str(path)] = LocalTarget(encoder, image_size=victim.image_size, device=device,
                                            batch_size=config.batch_size)
    return references


def prepare(victim: Victim, private_spec: str | None, public_spec: str, config: VerifyConfig,
            device: torch.device) -> tuple[Evidence, dict]:
    """The evidence shared by every suspect of this victim, and a description of it for reports."""
    root = DataConfig().resolved_root()
    private, private_label = private_images(victim, private_spec, root)
    public, public_label = public_images(victim, public_spec, root)
    wanted = "watermark" in config.methods and victim.watermark is not None
    references = reference_encoders(victim, config, device) if wanted else {}
    target = LocalTarget(victim.encoder, image_size=victim.image_size, device=device, batch_size=config.batch_size)
    evidence = prepare_evidence(target, victim.watermark, private, public, config, references)
    context = {"victim": str(victim.path), "private": private_label, "public": public_label,
               "watermark": None if victim.watermark is None else {
                   key: victim.watermark.meta.get(key) for key in ("kind", "rotations", "weight", "accuracy")}}
    return evidence, context


# --------------------------------------------------------------------------------------------------
# The suspect's side


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


@contextmanager
def open_suspect(spec: str, cache_path: Path, image_size: int, device: torch.device, batch_size: int,
                 api_key_env: str = API_KEY_ENV, progress: bool = True) -> Iterator[CachedTarget]:
    """The suspect behind a CachedTarget: a checkpoint run here, or the embedding API at a URL."""
    if is_url(spec):
        key = os.environ.get(api_key_env)
        if not key:
            raise VerifyError(f"the suspect {spec} is an API: put its API key in the environment variable {api_key_env}")
        client = HttpTarget(spec, key, batch_size=batch_size, retries=3)
        try:
            if client.image_size != image_size:
                raise VerifyError(f"the suspect API takes {client.image_size}x{client.image_size} images and the "
                                  f"victim {image_size}x{image_size}: they cannot be compared on the same images")
            yield _cached(client, f"http:{client.model_id}", cache_path, batch_size, progress)
        finally:
            client.close()
        return
    path = Path(spec)
    if not path.exists():
        raise VerifyError(f"the suspect {spec} is neither an existing checkpoint nor an http:// URL")
    encoder, meta = load_encoder(path, device)
    size = int(meta.get("image_size", image_size))
    if size != image_size:
        raise VerifyError(f"the suspect takes {size}x{size} images and the victim {image_size}x{image_size}")
    local = LocalTarget(encoder, image_size=image_size, device=device, batch_size=batch_size)
    yield _cached(local, f"local:{_digest(path)}", cache_path, batch_size, progress)


def _digest(path: Path) -> str:
    from encsteal.experiments.pipeline import file_digest

    return file_digest(path)


def _cached(target: Target, identity: str, cache_path: Path, batch_size: int, progress: bool) -> CachedTarget:
    cache = QueryCache(cache_path, identity)
    return CachedTarget(target, cache, run="verify", batch_size=batch_size, progress=progress)


def check_budget(config: VerifyConfig, watermarked: bool, max_queries: int | None) -> int:
    needed = config.queries(watermarked)
    if max_queries is not None and needed > max_queries:
        di = config.dataset_inference
        raise VerifyError(
            f"this verification sends {needed:,} images to the suspect (public {config.public_images}"
            + (f", private {di.fit_images} + {di.test_images}" if "dataset-inference" in config.methods else "")
            + (f", watermark 4 x {config.watermark.images}" if watermarked and "watermark" in config.methods else "")
            + f"), more than --max-queries {max_queries:,}: lower public_images, dataset_inference.fit_images, "
              "dataset_inference.test_images or watermark.images")
    return needed


# --------------------------------------------------------------------------------------------------
# One verification, written out


def run_verification(victim: Path, suspect: str, *, public: str, private: str | None = None,
                     config: VerifyConfig | None = None, max_queries: int | None = None, out: Path | None = None,
                     device: str = "auto", api_key_env: str = API_KEY_ENV, progress: bool = True) -> dict:
    """Verify one suspect; returns verify.json's content (also written with verify.md and verify.png to `out`)."""
    config = config or VerifyConfig()
    started = time.perf_counter()
    out = Path(out) if out is not None else Path("runs") / "verify" / _slug(suspect)
    torch_device = resolve_device(device)
    owner = open_victim(victim, torch_device)
    planned = check_budget(config, owner.watermark is not None, max_queries)
    with open_suspect(suspect, out / "queries.sqlite", owner.image_size, torch_device, config.batch_size,
                      api_key_env, progress) as target:  # first: an unreachable suspect fails before any work
        evidence, context = prepare(owner, private, public, config, torch_device)
        outcome = verify_suspect(evidence, target, config)
        target.cache.close()
    if outcome.summary["queries"] > planned:  # the cap was checked on the plan: never send more than planned
        raise EncstealError(f"verification sent {outcome.summary['queries']} images, planned {planned}")
    result = {"suspect": suspect, "out": str(out), **context, **outcome.summary, "settings": config.model_dump(mode="json"),
              "seconds": time.perf_counter() - started, "device": str(torch_device), "hardware": hardware()}
    write_verification(out, result, outcome)
    return result


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in spec.removeprefix("http://"))[-80:]


def hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def _p(value: float) -> str:
    return f"{value:.2e}"


def markdown(result: dict) -> str:
    lines = [f"# Ownership verification: {result['suspect']}", "",
             f"- victim: {result['victim']}", f"- private images: {result['private']}",
             f"- public images: {result['public']}",
             f"- queries sent to the suspect: {result['queries']:,} (bought in this run: {result['queries_paid']:,})",
             f"- overall: **{result['verdict']}** (smallest p-value {_p(result['min_p_value'])}, against "
             f"α / {round(result['alpha'] / result['combined_alpha'])} = {result['combined_alpha']:g})",
             f"- {result['seconds']:.0f} s on {result['device']} ({result['hardware']})", "",
             "| method | statistic | p-value | Δμ | verdict (α = " + f"{result['alpha']:g}) |", "|---|---:|---:|---:|---|"]
    for name, m in result["methods"].items():
        if "skipped" in m:
            lines.append(f"| {name} | | | | skipped: {m['skipped']} |")
            continue
        verdict = m["verdict"] + ("" if m["verdict"] == "stolen" else " (inconclusive)")
        lines.append(f"| {name} | {m['statistic']:.2f} | {_p(m['p_value'])} | {m['delta_mu']:.3f} | {verdict} |")
    lines += ["", "dataset-inference: t of the held-out private images' log-likelihoods against the public images' "
              "under a Gaussian mixture fitted on other private images, all through the suspect; Δμ their mean "
              "difference. watermark: the victim's secret head reading the rotations of the watermark images from "
              "the suspect's representations (mapped into the victim's space on the public images); Δμ its accuracy "
              "above the reference encoders' mean."]
    wm = result["methods"].get("watermark", {})
    if "accuracy" in wm:
        refs = ", ".join(f"{v:.3f}" for v in wm["references"].values())
        lines += ["", f"Watermark accuracy {wm['accuracy']:.3f} on {wm['images']} rotated images (chance "
                  f"{wm['chance']:.2f}); reference encoders {refs}."]
    return "\n".join(lines) + "\n"


def write_verification(out: Path, result: dict, outcome: Outcome) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "verify.md").write_text(markdown(result))
    plot_verification(result, outcome, out / "verify.png")


def plot_verification(result: dict, outcome: Outcome, path: Path) -> Path:
    """Dataset inference's two log-likelihood distributions; beside them, the watermark accuracy against the
    reference encoders'."""
    wm = result["methods"].get("watermark", {})
    panels = (outcome.private_log_likelihood is not None) + ("accuracy" in wm)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.2 * max(panels, 1), 3.4), squeeze=False)
    axes = list(axes[0])
    if outcome.private_log_likelihood is not None:
        axis = axes.pop(0)
        private, public = outcome.private_log_likelihood, outcome.public_log_likelihood
        low, high = np.percentile(np.concatenate([private, public]), [0.5, 99.5])
        bins = np.linspace(low, high, 40)
        axis.hist(public, bins=bins, alpha=0.55, density=True, label=f"public (n={len(public)})")
        axis.hist(private, bins=bins, alpha=0.55, density=True, label=f"held-out private (n={len(private)})")
        di = result["methods"]["dataset-inference"]
        axis.set_title(f"dataset inference: p = {di['p_value']:.2e}, Δμ = {di['delta_mu']:.2f}", fontsize=9)
        axis.set_xlabel("log-likelihood under the suspect's GMM")
        axis.legend(fontsize=7)
    if "accuracy" in wm:
        axis = axes.pop(0)
        refs = list(wm["references"].values())
        axis.scatter(refs, np.zeros(len(refs)), marker="o", label="reference encoders")
        axis.scatter([wm["accuracy"]], [0], marker="*", s=160, label="suspect")
        axis.axvline(wm["chance"], color="grey", ls=":", lw=0.8)
        axis.set_yticks([])
        axis.set_xlim(0, 1)
        axis.set_xlabel("watermark accuracy (rotation of the watermark images)")
        axis.set_title(f"watermark: p = {wm['p_value']:.2e}", fontsize=9)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["API_KEY_ENV", "Victim", "check_budget", "open_suspect", "open_victim", "prepare",
           "run_verification", "verify_config"]
