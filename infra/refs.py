"""Typed references to what one stage hands the next: curated sets, the tokenizer, the mixture
and checkpoints.

A reference is small and immutable: where the thing is, its content digest, and what a reader
needs to know before opening it. Each kind has one I/O module that reads what it points to
(`curation/shards.py`, `curation/tokenizer.py`, `curation/mixture.py`, `training/checkpoint.py`);
`verify()` asks that module, so a reference is checked the same way everywhere. In Dagster a
reference travels as materialization metadata (`to_metadata()` / `from_materialization()`), into
a program as part of its spec.json; nobody re-parses a bare URI string.

The I/O modules are imported inside `verify()`: references stay importable without torch (the
checkpoint module needs it) for the Dagster process and for config-only tools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


class MissingReference(LookupError):
    """A reference whose target is gone, uncommitted or not what the reference says."""


def plain_metadata(metadata) -> dict[str, Any]:
    """Materialization metadata as plain values (Dagster wraps each in a MetadataValue)."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


@dataclass(frozen=True, kw_only=True)
class _Ref:
    KEYS: ClassVar[dict[str, str]] = {}  # field -> metadata key

    def to_metadata(self) -> dict[str, Any]:
        return {key: getattr(self, name) for name, key in self.KEYS.items() if getattr(self, name) is not None}

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], what: str = "upstream"):
        md = plain_metadata(metadata)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [cls.KEYS[name] for name in required if md.get(cls.KEYS[name]) is None]
        if missing:
            raise MissingReference(f"{what} materialization lacks {missing}; re-materialize it")
        return cls(**{name: md[key] for name, key in cls.KEYS.items() if md.get(key) is not None})

    @classmethod
    def from_materialization(cls, materialization, what: str = "upstream"):
        """From a Dagster AssetMaterialization (or anything with `.metadata`)."""
        return cls.from_metadata(dict(materialization.metadata), what)

    def _expect_digest(self, found: str, what: str, why: str = "") -> None:
        if found != self.digest:
            raise MissingReference(f"{what} {self.uri} has {'manifest ' if why else ''}digest {found}, "
                                   f"expected {self.digest}{why}")


@dataclass(frozen=True, kw_only=True)
class CuratedSetRef(_Ref):
    """A curated set: WebDataset shards with a Parquet manifest under `uri`."""

    uri: str
    digest: str
    modality: str
    KEYS: ClassVar[dict[str, str]] = {"uri": "set_uri", "digest": "digest", "modality": "modality"}

    def verify(self):
        """The CuratedSet (curated_set.json) behind this reference; checked against the digest."""
        from curation.shards import CuratedSet

        try:
            curated = CuratedSet.load(self.uri)
        except FileNotFoundError as e:
            raise MissingReference(f"curated set {self.uri} is gone: {e}") from e
        self._expect_digest(curated.digest, "curated set")
        return curated


@dataclass(frozen=True, kw_only=True)
class TokenizerRef(_Ref):
    """A trained tokenizer folder (tokenizer.json)."""

    uri: str
    digest: str
    vocab_size: int
    KEYS: ClassVar[dict[str, str]] = {"uri": "tokenizer_uri", "digest": "digest", "vocab_size": "vocab_size"}

    def verify(self) -> None:
        from curation.tokenizer import tokenizer_digest

        self._expect_digest(tokenizer_digest(self.uri), "tokenizer")


@dataclass(frozen=True, kw_only=True)
class MixtureRef(_Ref):
    """mixture.json: the curated sets and the tokenizer a training stage reads, pinned by digest."""

    uri: str
    digest: str
    KEYS: ClassVar[dict[str, str]] = {"uri": "mixture_uri", "digest": "digest"}

    def verify(self) -> dict:
        """The mixture manifest, read once; fails when it is gone or changed."""
        from curation.mixture import read_mixture

        try:
            mixture = read_mixture(self.uri)
        except FileNotFoundError as e:
            raise MissingReference(str(e)) from e
        self._expect_digest(mixture["digest"], "mixture")
        return mixture

    @classmethod
    def at(cls, uri: str) -> "MixtureRef":
        """A reference to the mixture.json at `uri` (a folder or the file), for a URI a person typed."""
        from curation.mixture import mixture_file, read_mixture

        try:
            return cls(uri=mixture_file(uri), digest=read_mixture(uri)["digest"])
        except FileNotFoundError as e:
            raise MissingReference(str(e)) from e


@dataclass(frozen=True, kw_only=True)
class ToolDataRef(_Ref):
    """Executed tool traces for SFT (sft_tool_data): tool_data.json + conversations.jsonl."""

    uri: str
    digest: str
    KEYS: ClassVar[dict[str, str]] = {"uri": "tool_data_uri", "digest": "digest"}

    def verify(self) -> dict:
        """The manifest; fails when the traces are gone or differ from the recorded digest."""
        from agents.sft_data import read_tool_data

        try:
            manifest, _ = read_tool_data(self.uri)
        except (FileNotFoundError, ValueError) as e:
            raise MissingReference(f"tool data {self.uri}: {e}") from e
        self._expect_digest(manifest["digest"], "tool data")
        return manifest

    @classmethod
    def at(cls, uri: str) -> "ToolDataRef":
        from agents.sft_data import read_tool_data

        try:
            return cls(uri=uri, digest=read_tool_data(uri)[0]["digest"])
        except (FileNotFoundError, ValueError) as e:
            raise MissingReference(f"tool data {uri}: {e}") from e


@dataclass(frozen=True, kw_only=True)
class RFTDataRef(_Ref):
    """Rejection-sampling data (rft_data): rft_data.json + rft.parquet, reward-1 RL trajectories."""

    uri: str
    digest: str
    KEYS: ClassVar[dict[str, str]] = {"uri": "rft_data_uri", "digest": "digest"}

    def verify(self) -> dict:
        from training.rft import read_rft

        try:
            manifest, _ = read_rft(self.uri)
        except (FileNotFoundError, ValueError) as e:
            raise MissingReference(f"rejection-sampling data {self.uri}: {e}") from e
        self._expect_digest(manifest["digest"], "rejection-sampling data")
        return manifest


@dataclass(frozen=True, kw_only=True)
class CheckpointRef(_Ref):
    """A committed checkpoint: its folder, the sha256 of its manifest, its MLflow LoggedModel."""

    uri: str
    digest: str
    stage: str
    step: int
    model_id: str | None = None
    profile: str | None = None
    KEYS: ClassVar[dict[str, str]] = {"uri": "checkpoint_uri", "digest": "checkpoint_digest", "stage": "stage",
                                      "step": "steps", "model_id": "mlflow_model_id", "profile": "profile"}

    def verify(self) -> dict:
        """The checkpoint's manifest, read once; fails when it is uncommitted, gone or rewritten."""
        from training.checkpoint import CheckpointError, read_manifest

        try:
            manifest, digest = read_manifest(self.uri)
        except CheckpointError as e:
            raise MissingReference(str(e)) from e
        self._expect_digest(digest, "checkpoint", " (rewritten since it was recorded)")
        return manifest

    @classmethod
    def at(cls, uri: str, model_id: str | None = None) -> "CheckpointRef":
        """A reference to the checkpoint committed at `uri`, read from its manifest (for a URI a
        person typed: the launchpad's `checkpoint_uri`, a CLI's `--init-from`)."""
        from training.checkpoint import CheckpointError, read_manifest

        try:
            manifest, digest = read_manifest(uri)
        except CheckpointError as e:
            raise MissingReference(str(e)) from e
        return cls.from_manifest(uri, manifest, digest, model_id)

    @classmethod
    def from_manifest(cls, uri: str, manifest: dict, digest: str, model_id: str | None = None) -> "CheckpointRef":
        """The reference to a checkpoint whose manifest (and its sha256) the caller has read."""
        return cls(uri=uri, digest=digest, stage=manifest.get("stage", "?"), step=int(manifest["step"]),
                   model_id=model_id, profile=manifest.get("profile"))
