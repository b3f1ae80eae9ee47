"""The mixture manifest: which curated sets and tokenizer a training stage reads, and the target
vision:text token ratio (10:90 by default, constant from step 0: early fusion)."""


import dagster as dg

from assets.common import check_specs, upstream_metadata
from assets.curated_data import curated_set_of
from curation.mixture import build_mixture
from curation.tokenizer import TokenizerArtifact
from infra import storage
from pipelines.resources import ArtifactStore, MlflowTracking


class MixtureRunConfig(dg.Config):
    vision_ratio: float = 0.1  # share of vision tokens among all tokens


@dg.asset(group_name="data", code_version="mixture-v1", kinds={"python"},
          deps=["text_corpus", "image_text_corpus", "video_corpus", "tokenizer"],
          check_specs=check_specs("mixture", ("sources_present",)))
def mixture(context: dg.AssetExecutionContext, config: MixtureRunConfig, artifacts: ArtifactStore,
            mlflow: MlflowTracking) -> dg.MaterializeResult:
    """mixture.json: the curated sets (URIs, digests, token counts), the tokenizer and the target
    vision token ratio. Its digest covers all of them, so any data change gives a new version."""
    sets = {"text": curated_set_of(context, "text_corpus"), "image_text": curated_set_of(context, "image_text_corpus"),
            "video": curated_set_of(context, "video_corpus")}
    tok_md = upstream_metadata(context, "tokenizer", ("tokenizer_uri", "digest", "vocab_size"))
    tok = TokenizerArtifact(tok_md["tokenizer_uri"], tok_md["digest"], int(tok_md["vocab_size"]))
    try:
        mix = build_mixture(sets, tok, artifacts.uri("mixture", context.run_id), config.vision_ratio)
    except ValueError as e:
        raise dg.Failure(description=f"invalid mixture: {e}") from e
    uri = artifacts.uri("mixture", context.run_id, "mixture.json")
    tracker, run_id = mlflow.stage_run(context, "mixture")
    tracker.client.set_tag(run_id, "k25.mixture_digest", mix["digest"])
    tracker.finish(run_id)
    missing = [n for n, s in mix["sources"].items() if not storage.exists(s["manifest_uri"])]
    table = "\n".join(f"| {n} | {s['modality']} | {s['num_samples']} | {s['tokens']} | {s['token_share']:.3f} |"
                      for n, s in sorted(mix["sources"].items()))
    return dg.MaterializeResult(
        metadata={"mixture_uri": uri, "digest": mix["digest"], "vision_ratio": mix["vision_ratio"],
                  "text_tokens": mix["tokens"]["text"], "vision_tokens": mix["tokens"]["vision"],
                  "sources": dg.MetadataValue.md("| source | modality | samples | tokens | token share |\n"
                                                 f"|---|---|---|---|---|\n{table}\n"),
                  "mlflow_run": tracker.run_url(run_id)},
        data_version=dg.DataVersion(mix["digest"]),
        check_results=[dg.AssetCheckResult(check_name="sources_present", asset_key="mixture", passed=not missing,
                                           metadata={"missing_manifests": str(missing)})])
