"""Data curation for the K2.5 walking skeleton: real registry data -> deterministic WebDataset sets.

    curate_text / curate_image_text / curate_video  -> CuratedSet (shards + manifest + curated.json)
    train_tokenizer                                 -> TokenizerRef (byte-level BPE, K2.5 specials)
    build_mixture                                   -> mixture.json (sources, tokenizer, token shares)

Every output location is a URI from infra.storage: a local folder or s3://bucket/prefix.
No Dagster here: the assets in defs/data/ call these functions.
"""
