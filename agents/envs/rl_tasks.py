"""RL prompts organised by ability, not by modality (RECIPE.md §6.3; POSTTRAIN.md §4.4).

Each domain mixes text and image prompts where the data allows:

| domain      | text                               | image                                               |
|-------------|------------------------------------|-----------------------------------------------------|
| reasoning   | GSM8K train (math reward)          | the same problem rendered as an image (question in pixels only) |
| knowledge   | MMLU validation (choice letter)    | -                                                   |
| perception  | -                                  | sklearn digits (index < 1200: eval keeps the rest), disk counting, locating a square (point F1), OCR of a rendered KJV word |
| instruction | KJV verses with checkable constraints (IF checkers) | -                                  |
| tool        | -                                  | the IPython image tasks of the SFT issue, multi-turn through the agent loop |

A task is a user message (with its media), the reward kind that scores it (agents/rewards) and
the reference. Image prompts pass a vision-critical filter: with the image removed, the prompt
text must not contain the answer (`vision_critical`); a task that fails it is dropped and counted.
Tasks are pure functions of (domain, index, seed): a resumed run rebuilds the same pool.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from agents.envs.domains import DOMAINS, FAMILIES, parse_domains  # noqa: F401  (re-exported)
from agents.envs.image_tasks import make_task, media_pixels
from agents.rewards.instructions import describe

BOXED = "Put the final answer in \\boxed{}."
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class RLTask:
    id: str
    domain: str
    modality: str  # text | image
    text: str  # the user turn's text
    reward: str  # a kind of agents.rewards.REWARDS, or "tool" (the image task's own verifier)
    reference: object
    media: tuple = ()  # pixel tensors (HxWx3 uint8) in placeholder order
    answer_text: str | None = None  # the answer as a string (vision-critical check)
    extra: dict = field(default_factory=dict)  # e.g. the ImageTask of a tool task

    def messages(self) -> list[dict]:
        user = {"role": "user", "content": self.text}
        if self.media:
            user["media"] = list(self.media)
        return [user]


def vision_critical(task: RLTask) -> bool:
    """An image task whose text alone does not state its answer."""
    if task.modality != "image" or task.answer_text is None:
        return True
    answer = task.answer_text.strip().lower()
    text = task.text.lower()
    if re.fullmatch(r"-?\d+(\.\d+)?", answer):
        return re.search(rf"(?<![\d.]){re.escape(answer)}(?![\d.])", text) is None
    return answer not in text


def _pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(media_pixels(image).copy())


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default()


def render_text(text: str, width: int = 448, line_chars: int = 48) -> np.ndarray:
    """Black text on white, wrapped: the question exists only as pixels."""
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > line_chars and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    img = Image.new("RGB", (width, 14 * len(lines) + 8), "white")
    draw = ImageDraw.Draw(img)
    for i, ln in enumerate(lines):
        draw.text((4, 4 + 14 * i), ln, fill="black", font=_font())
    return np.asarray(img)


# ---- sources

@lru_cache(maxsize=2)
def _gsm8k(data_root: str) -> list[dict]:
    import json

    path = Path(data_root) / "benchmarks" / "gsm8k" / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"GSM8K train split not found at {path} (set --data-root to the shared data folder)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=2)
def _mmlu_val(data_root: str) -> list[tuple[str, list[str]]]:
    folder = Path(data_root) / "benchmarks" / "mmlu" / "val"
    files = sorted(folder.glob("*_val.csv"))
    if not files:
        raise FileNotFoundError(f"MMLU validation files not found under {folder}")
    rows = []
    for path in files:
        subject = path.name[: -len("_val.csv")].replace("_", " ")
        with open(path, newline="", encoding="utf-8") as f:
            rows += [(subject, row) for row in csv.reader(f) if len(row) == 6]
    return rows


@lru_cache(maxsize=1)
def _verses() -> list[str]:
    from curation.sources import kjv_verses

    return [v["text"].strip() for v in kjv_verses() if 40 <= len(v["text"]) <= 160]


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:1200], d.target[:1200]  # evaluation's digit suites use index >= 1200


def gsm8k_reference(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


# ---- builders: (index, rng, data_root) -> RLTask

def reasoning_text(i, rng, root):
    ex = _gsm8k(root)[rng.randrange(len(_gsm8k(root)))]
    ref = gsm8k_reference(ex["answer"])
    return RLTask(f"reasoning/text/{i}", "reasoning", "text", f"{ex['question']} {BOXED}", "math", ref, answer_text=ref)


def reasoning_image(i, rng, root):
    ex = _gsm8k(root)[rng.randrange(len(_gsm8k(root)))]
    ref = gsm8k_reference(ex["answer"])
    return RLTask(f"reasoning/image/{i}", "reasoning", "image", f"Solve the problem in the image. {BOXED}", "math", ref,
                  (_pixels(render_text(ex["question"])),), ref)


def knowledge_text(i, rng, root):
    subject, row = _mmlu_val(root)[rng.randrange(len(_mmlu_val(root)))]
    q, *options, answer = row
    listing = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options))
    text = f"A question about {subject}.\n{q}\n{listing}\nAnswer with the letter in \\boxed{{}}."
    return RLTask(f"knowledge/text/{i}", "knowledge", "text", text, "choice", answer.strip().upper())


def perception_digit(i, rng, root):
    images, labels = _digits()
    k = rng.randrange(len(images))
    gray = (255 - images[k] * 255 / 16).astype(np.uint8)  # dark digit on white, as drawn
    rgb = np.repeat(np.kron(gray, np.ones((7, 7), np.uint8))[..., None], 3, axis=2)
    label = str(int(labels[k]))
    return RLTask(f"perception/digit/{i}", "perception", "image", "Which digit is shown? Answer in \\boxed{}.", "exact",
                  label, (_pixels(rgb),), label)


def perception_count(i, rng, root):
    t = make_task("count", "train", i, rng.randrange(1 << 30))
    text = t.question.replace("`img`", "the image") + f" {BOXED}"
    return RLTask(f"perception/count/{i}", "perception", "image", text, "count", t.answer,
                  tuple(_pixels(a) for a in t.images.values()), str(t.answer))


def perception_locate(i, rng, root):
    t = make_task("locate", "train", i, rng.randrange(1 << 30))
    (name, image), = t.images.items()
    ref = {"points": [list(t.answer)], "sigma": 3.0}  # pixels of the 64x64 image the question is about
    text = t.question.replace(f"`{name}`", "the {0}x{1} image".format(*image.shape[:2])) + " Put it in \\boxed{}."
    return RLTask(f"perception/locate/{i}", "perception", "image", text, "points", ref, (_pixels(image),))


def perception_ocr(i, rng, root):
    verse = _verses()[rng.randrange(len(_verses()))]
    word = max(re.findall(r"[A-Za-z]+", verse), key=len)
    img = render_text(word, width=28 * max(2, len(word) // 2), line_chars=64)
    return RLTask(f"perception/ocr/{i}", "perception", "image", "What word is written in the image? Answer in \\boxed{}.",
                  "ocr", word, (_pixels(img),), word)


_IF_TEMPLATES = ("Paraphrase this verse: \"{v}\"", "Explain in plain words what this verse says: \"{v}\"",
                 "Write one sentence inspired by this verse: \"{v}\"")


EXCLUDABLE = ("very", "thee", "thou", "and")


def instruction_constraints(rng: random.Random, verse: str) -> list[dict]:
    """Three satisfiable constraints: one that text must actively meet (a word, an ending), one
    more of any kind ("exclude" or "lowercase" alone would be met by any short lowercase noise)
    and at least five words.
    Never contradictory: the required word is not an excludable one, and a fixed ending (capital
    letter) never comes with "lowercase"."""
    vocab = [w.lower() for w in re.findall(r"[A-Za-z]{4,}", verse) if w.lower() not in EXCLUDABLE] or ["light"]
    include = {"kind": "include", "words": [rng.choice(vocab)]}
    ending = {"kind": "ends_with", "phrase": rng.choice(("Amen.", "That is all.", "So it is."))}
    first = rng.choice([include, ending])
    other = [{"kind": "max_words", "n": rng.choice((10, 15, 20))},
             {"kind": "exclude", "words": [rng.choice(EXCLUDABLE)]}]
    other += [ending] if first is include else []
    other += [{"kind": "lowercase"}] if first is include else []
    # a content floor: without it the required word or phrase alone would satisfy the prompt
    return [first, rng.choice(other), {"kind": "min_words", "n": 5}]


def instruction_text(i, rng, root):
    verse = _verses()[rng.randrange(len(_verses()))]
    cons = instruction_constraints(rng, verse)
    text = rng.choice(_IF_TEMPLATES).format(v=verse) + " " + " ".join(describe(c) for c in cons)
    return RLTask(f"instruction/text/{i}", "instruction", "text", text, "instructions", cons)


def tool_image(i, rng, root):
    family = ("count", "size", "pie", "locate", "maze")[i % 5]
    t = make_task(family, "train", i, rng.randrange(1 << 30))
    return RLTask(f"tool/{family}/{i}", "tool", "image", t.question, "tool", t.answer, answer_text=None,
                  extra={"image_task": t})


BUILDERS = {  # the families of agents/envs/domains.py FAMILIES
    "reasoning": {"text": reasoning_text, "image": reasoning_image},
    "knowledge": {"text": knowledge_text},
    "perception": {"digit": perception_digit, "count": perception_count, "locate": perception_locate,
                   "ocr": perception_ocr},
    "instruction": {"text": instruction_text},
    "tool": {"image": tool_image},
}


def build_pool(domains: dict[str, float], size: int, seed: int, data_root: str) -> tuple[list[RLTask], dict[str, int]]:
    """A fixed pool of `size` tasks drawn by weight (a domain's families in turn),
    and how many image tasks the vision-critical filter dropped per domain."""
    rng = random.Random(f"rl-pool:{seed}")
    names, weights = list(domains), list(domains.values())
    pool, dropped, made = [], {}, {d: 0 for d in names}
    attempts = 0
    while len(pool) < size:
        attempts += 1
        if attempts > 20 * size:
            raise RuntimeError(f"could not build {size} vision-critical RL tasks (dropped: {dropped})")
        d = rng.choices(names, weights)[0]
        domain, _, family = d.partition(".")
        fns = [BUILDERS[domain][family]] if family else list(BUILDERS[domain].values())
        task = fns[made[d] % len(fns)](len(pool), rng, data_root)
        made[d] += 1
        if not vision_critical(task):
            dropped[task.domain] = dropped.get(task.domain, 0) + 1
            continue
        pool.append(task)
    return pool, dropped
