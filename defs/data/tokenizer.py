"""The tokenizer: byte-level BPE trained on the curated text with the K2.5 special tokens."""

import dagster as dg

from curation.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from defs.common import check_specs, upstream_ref, verified
from defs.resources import ArtifactStore, MlflowTracking, RunProfile
from infra.refs import CuratedSetRef


class TokenizerRunConfig(dg.Config):
    vocab_size: int = 0  # 0: the run profile's size


@dg.asset(group_name="data", code_version="tokenizer-v2", kinds={"python"}, deps=["text_corpus"],
          check_specs=check_specs("tokenizer", ("special_tokens_single_ids",)))
def tokenizer(context: dg.AssetExecutionContext, config: TokenizerRunConfig, profile: RunProfile,
              artifacts: ArtifactStore, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Byte-level BPE (HuggingFace `tokenizers`) trained on the curated text set. Carries the K2.5
    special tokens ([BOS]/[EOS], im_* roles, media_*, think tags); its data version is the sha256
    of tokenizer.json, so retraining on unchanged text changes nothing downstream."""
    with mlflow.stage_run(context, "tokenizer") as run:
        vocab = config.vocab_size or profile.load().tokenizer_vocab
        text = upstream_ref(context, "text_corpus", CuratedSetRef)
        verified(text, "text_corpus")
        ref = train_tokenizer(text.uri, artifacts.uri("tokenizer", context.run_id), vocab, log=context.log.info)
        tok = load_tokenizer(ref.uri)
        bad = [t for t in SPECIAL_TOKENS if len(tok.encode(t).ids) != 1]
        run.tracker.client.log_param(run.run_id, "vocab_size", ref.vocab_size)
        run.tracker.client.set_tag(run.run_id, "k25.tokenizer_digest", ref.digest)
        checks = run.record_checks([dg.AssetCheckResult(
            check_name="special_tokens_single_ids", asset_key="tokenizer", passed=not bad,
            metadata={"split_tokens": str(bad)})])
    return dg.MaterializeResult(
        metadata={**ref.to_metadata(), "trained_on": text.uri, "text_digest": text.digest, **run.links()},
        data_version=dg.DataVersion(ref.digest), check_results=checks)
