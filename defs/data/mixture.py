"""The mixture manifest: which curated sets and tokenizer a training stage reads, with each
source's share of its modality group's tokens. The vision:text ratio is not here: it belongs to
each stage (`data.vision_ratio` of its spec), so one mixture serves every stage."""

import dagster as dg

from curation.mixture import build_mixture
from defs.common import check_specs, upstream_ref, verified
from defs.resources import ArtifactStore, MlflowTracking
from infra import storage
from infra.refs import CuratedSetRef, MixtureRef, TokenizerRef

CURATED_ASSETS = {"text": "text_corpus", "image_text": "image_text_corpus", "video": "video_corpus"}


@dg.asset(group_name="data", code_version="mixture-v2", kinds={"python"}, deps=[*CURATED_ASSETS.values(), "tokenizer"],
          check_specs=check_specs("mixture", ("sources_present",)))
def mixture(context: dg.AssetExecutionContext, artifacts: ArtifactStore, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """mixture.json: the curated sets (URIs, digests, token counts) and the tokenizer. Its digest
    covers all of them, so any data change gives a new version."""
    with mlflow.stage_run(context, "mixture") as run:
        sets = {name: verified(upstream_ref(context, key, CuratedSetRef), key) for name, key in CURATED_ASSETS.items()}
        tok = upstream_ref(context, "tokenizer", TokenizerRef)
        try:
            mix = build_mixture(sets, tok, artifacts.uri("mixture", context.run_id), log=context.log.info)
        except ValueError as e:
            raise dg.Failure(description=f"invalid mixture: {e}") from e
        ref = MixtureRef(uri=artifacts.uri("mixture", context.run_id, "mixture.json"), digest=mix["digest"])
        run.tracker.client.set_tag(run.run_id, "k25.mixture_digest", mix["digest"])
        missing = [n for n, s in mix["sources"].items() if not storage.exists(s["manifest_uri"])]
        checks = run.record_checks([dg.AssetCheckResult(
            check_name="sources_present", asset_key="mixture", passed=not missing,
            metadata={"missing_manifests": str(missing)})])
    table = "\n".join(f"| {n} | {s['modality']} | {s['num_samples']} | {s['tokens']} | {s['token_share']:.3f} |"
                      for n, s in sorted(mix["sources"].items()))
    return dg.MaterializeResult(
        metadata={**ref.to_metadata(), "text_tokens": mix["tokens"]["text"], "vision_tokens": mix["tokens"]["vision"],
                  "sources": dg.MetadataValue.md("| source | modality | samples | tokens | share of its group |\n"
                                                 f"|---|---|---|---|---|\n{table}\n"),
                  **run.links()},
        data_version=dg.DataVersion(mix["digest"]), check_results=checks)
