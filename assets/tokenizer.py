"""The tokenizer: byte-level BPE trained on the curated text with the K2.5 special tokens."""


import dagster as dg

from assets.common import check_specs
from assets.curated_data import curated_set_of
from curation.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from pipelines.resources import ArtifactStore, MlflowTracking
from training.config import ConfigError, load_profile


class TokenizerRunConfig(dg.Config):
    profile: str = "tiny"
    vocab_size: int = 0  # 0: the profile's size


@dg.asset(group_name="data", code_version="tokenizer-v1", kinds={"python"}, deps=["text_corpus"],
          check_specs=check_specs("tokenizer", ("special_tokens_single_ids",)))
def tokenizer(context: dg.AssetExecutionContext, config: TokenizerRunConfig, artifacts: ArtifactStore,
              mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Byte-level BPE (HuggingFace `tokenizers`) trained on the curated text set. Carries the K2.5
    special tokens ([BOS]/[EOS], im_* roles, media_*, think tags); its data version is the sha256
    of tokenizer.json, so retraining on unchanged text changes nothing downstream."""
    try:
        vocab = config.vocab_size or load_profile(config.profile).tokenizer_vocab
    except ConfigError as e:
        raise dg.Failure(description=str(e)) from e
    text = curated_set_of(context, "text_corpus")
    art = train_tokenizer(text.uri, artifacts.uri("tokenizer", context.run_id), vocab)
    tok = load_tokenizer(art.uri)
    bad = [t for t in SPECIAL_TOKENS if len(tok.encode(t).ids) != 1]
    tracker, run_id = mlflow.stage_run(context, "tokenizer")
    tracker.client.log_param(run_id, "vocab_size", art.vocab_size)
    tracker.client.set_tag(run_id, "k25.tokenizer_digest", art.digest)
    tracker.finish(run_id)
    return dg.MaterializeResult(
        metadata={"tokenizer_uri": art.uri, "digest": art.digest, "vocab_size": art.vocab_size,
                  "trained_on": text.uri, "text_digest": text.digest, "mlflow_run": tracker.run_url(run_id)},
        data_version=dg.DataVersion(art.digest),
        check_results=[dg.AssetCheckResult(check_name="special_tokens_single_ids", asset_key="tokenizer",
                                           passed=not bad, metadata={"split_tokens": str(bad)})])
