"""Curated data sets, one asset per source kind: text, image-text and video.

Each writes deterministic WebDataset shards plus a Parquet manifest to a fresh folder under the
artifact root (`curated/<kind>/<dagster run id>/`), so a training run's recorded data URI always
holds exactly the bytes it trained on. The data version is the set's content digest: an
unchanged source gives the same digest and downstream assets stay fresh. The curation settings
are the run profile's (recipes/), overridden by the launchpad's typed fields.
"""

import dataclasses
import typing

import dagster as dg
import pydantic

from curation.image_text import ImageCurationConfig, curate_image_text
from curation.preview import preview_markdown
from curation.shards import CuratedSet
from curation.sources import SourceSpec
from curation.text import TextCurationConfig, curate_text
from curation.video import VideoCurationConfig, curate_video
from defs.common import check_specs, overrides_config, resolve_or_fail, set_fields
from defs.resources import ArtifactStore, MlflowTracking, RunProfile, StageRun
from infra.refs import CuratedSetRef

CODE_VERSION = "curation-v3"
CURATION_CHECKS = ("has_samples", "rejected_fraction_below_threshold")


def _source_spec_config() -> type:
    """A `curation.sources.SourceSpec` in run config, field for field (your own data for the same
    asset); in the launchpad `kind` defaults to local and `uri` is required."""
    hints = typing.get_type_hints(SourceSpec)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(SourceSpec)}
    fields.update(kind=(str, "local"), uri=(str, ...))
    return pydantic.create_model("SourceSpecConfig", __base__=dg.Config, __doc__=SourceSpec.__doc__, **fields)


SourceSpecConfig = _source_spec_config()


class CurationRunConfig(dg.Config):
    # Replaces the kind's default sources (the bundled samples) when non-empty.
    sources: list[SourceSpecConfig] = []
    max_rejected_fraction: float = 0.5  # the blocking check fails above this share of rejected samples


def _run_config(name: str, block: type) -> type:
    return overrides_config(name, block, skip=("sources",), base=CurationRunConfig)


TextRunConfig = _run_config("TextCurationRunConfig", TextCurationConfig)
ImageRunConfig = _run_config("ImageCurationRunConfig", ImageCurationConfig)
VideoRunConfig = _run_config("VideoCurationRunConfig", VideoCurationConfig)


def curation_config(kind: str, config: CurationRunConfig, profile: RunProfile):
    import recipes

    overrides = {k: v for k, v in set_fields(config).items() if k not in ("sources", "max_rejected_fraction")}
    if config.sources:
        overrides["sources"] = [SourceSpec(**s.model_dump()) for s in config.sources]
    return resolve_or_fail(recipes.resolve_curation, profile.name, kind, overrides)


def curated_result(run: StageRun, asset: str, curated: CuratedSet, config: CurationRunConfig) -> dg.MaterializeResult:
    rejected = sum(curated.rejected.values())
    fraction = rejected / max(1, rejected + curated.num_samples)
    run.tracker.log_metrics(run.run_id, {"num_samples": curated.num_samples, "rejected": rejected,
                                         "rejected_fraction": fraction}, step=0, synchronous=True)
    run.tracker.client.set_tag(run.run_id, "k25.data_digest", curated.digest)
    ref = CuratedSetRef(uri=curated.uri, digest=curated.digest, modality=curated.modality)
    metadata = {
        **ref.to_metadata(), "manifest_uri": curated.manifest_uri,
        "num_samples": curated.num_samples, "num_shards": curated.num_shards,
        "rejected": rejected,
        "rejected_by_reason": dg.MetadataValue.json(curated.rejected),
        "quarantine_uri": curated.quarantine_uri,
        "stats": dg.MetadataValue.json(curated.stats),
        "preview": dg.MetadataValue.md(preview_markdown(curated.uri, curated.modality)),
        "rejected_fraction": fraction,
        **run.links(),
    }
    checks = run.record_checks([
        dg.AssetCheckResult(check_name="has_samples", asset_key=asset, passed=curated.num_samples > 0,
                            metadata={"num_samples": curated.num_samples}),
        dg.AssetCheckResult(check_name="rejected_fraction_below_threshold", asset_key=asset,
                            passed=fraction <= config.max_rejected_fraction,
                            metadata={"rejected_fraction": fraction, "threshold": config.max_rejected_fraction}),
    ])
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(curated.digest), check_results=checks)


def curated_asset(name: str, kind: str, curate, config_class: type, description: str) -> dg.AssetsDefinition:
    """A curation asset: the run profile's settings for `kind` with the launchpad's overrides,
    curated into a fresh folder, checked, recorded in MLflow."""

    @dg.asset(name=name, group_name="data", code_version=CODE_VERSION, kinds={"python", "webdataset"},
              description=description, check_specs=check_specs(name, CURATION_CHECKS))
    def _asset(context: dg.AssetExecutionContext, config: config_class, profile: RunProfile,  # type: ignore[valid-type]
               artifacts: ArtifactStore, mlflow: MlflowTracking) -> dg.MaterializeResult:
        with mlflow.stage_run(context, name) as run:
            cfg = curation_config(kind, config, profile)
            curated = curate(artifacts.uri("curated", kind, context.run_id), cfg, log=context.log.info)
            return curated_result(run, name, curated, config)

    return _asset


text_corpus = curated_asset("text_corpus", "text", curate_text, TextRunConfig, """\
Text documents (CPython reference prose, the KJV bible by chapter): Unicode-normalised,
filtered by length, letter share, stop-word share, word length and repeated lines, split when
long, exact and MinHash near-duplicates removed; rejects listed in quarantine.jsonl.""")

image_text_corpus = curated_asset("image_text_corpus", "image_text", curate_image_text, ImageRunConfig, """\
Captioned images (scikit-image samples, labelled scikit-learn digits, or your own sources),
decoded, validated and resized by the recipe's NaViT rule (aspect ratio kept, downscale only to
`patch_limit` patches, zero-padded to multiples of 28 px: whole 2x2-merged patch tokens).""")

video_corpus = curated_asset("video_corpus", "video", curate_video, VideoRunConfig, """\
Real video clips decoded with PyAV (streaming), sampled at min(sample_fps, native fps),
resized by the NaViT rule with the per-frame patch limit and grouped into 4-frame chunks, each
with its hh:mm:ss.fff start time.""")
