"""Image tasks solved through IPython (zero-vision SFT, RECIPE.md §5; POSTTRAIN.md §3).

Every task is built from real pixels on disk (scikit-image's photos as backgrounds, shapes drawn
with `skimage.draw`, mazes and pie charts we render) and its ground truth comes from how it was
built, never from a solver: the count of disks drawn, the pixels of the mask drawn, the BFS
distance on the maze grid generated, the slice shares chosen, the box pasted, the square placed.
The question never states the answer, and the model sees the image only as text (a variable name
and its shape); the pixels live in the kernel session.

Families: count, size, maze, pie, diff, locate. `diff` is kept out of SFT as a transfer probe.
Splits: train and test use different source photos, and test mazes are larger.

Each family also has teacher programs (3-5 variants with different names, step order and
helpers); `sft_tool_data` runs them in the sandboxed kernel and keeps a trace only when the
answer read from the real output equals the ground truth.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

FAMILIES = ("count", "size", "maze", "pie", "diff", "locate")
SFT_FAMILIES = ("count", "size", "maze", "pie", "locate")  # diff: held out entirely (transfer probe)
TRAIN_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel", "page", "clock", "horse")
TEST_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "text")
COLORS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 50, 220)}
PIE_COLORS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 50, 220), "yellow": (230, 210, 20),
              "purple": (140, 40, 170), "orange": (240, 130, 20)}
CHANNEL = {"red": 0, "green": 1, "blue": 2}
SIZE = 64
MAZE_CELLS = {"train": (3, 4, 5), "test": (6, 7)}
MAZE_BLOCK = 4


@dataclass
class ImageTask:
    id: str
    family: str
    split: str
    question: str  # what the user asks (no answer in it)
    images: dict[str, np.ndarray]  # variable name -> HxWx3 uint8
    answer: object  # ground truth from construction
    facts: dict = field(default_factory=dict)  # construction details the teacher may rely on (colour...)

    def describe_images(self) -> str:
        parts = [f"`{name}` is a {a.shape[0]}x{a.shape[1]}x{a.shape[2]} uint8 RGB array (also /tmp/{name}.png)"
                 for name, a in self.images.items()]
        return "; ".join(parts) + "."


# ---- sources

@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    img = getattr(skimage.data, name)()
    if img.dtype == bool:  # the horse silhouette
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = rgb2gray(rgba2rgb(img) if img.shape[2] == 4 else img)
        img = (img * 255).astype(np.uint8)
    return img


def background(rng: random.Random, split: str) -> tuple[np.ndarray, str]:
    """A grey 64x64 crop of a real photo (held-out photos for the test split), contrast squeezed
    into [40, 200] so that saturated shapes stand out only by colour, never by brightness."""
    from skimage.transform import resize

    name = rng.choice(TRAIN_PHOTOS if split == "train" else TEST_PHOTOS)
    photo = _photo(name)
    side = rng.randint(96, min(photo.shape[:2]))
    y, x = rng.randint(0, photo.shape[0] - side), rng.randint(0, photo.shape[1] - side)
    crop = resize(photo[y:y + side, x:x + side], (SIZE, SIZE), anti_aliasing=True, preserve_range=True)
    grey = (40 + crop / 255.0 * 160).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), name


def _task_id(family: str, split: str, index: int, seed: int) -> str:
    return f"{family}-{split}-{index}-{hashlib.sha256(f'{seed}'.encode()).hexdigest()[:6]}"


def _place_disks(rng, n, radius_range, taken, margin=2):
    """n disk centres and radii inside the image, not touching each other or `taken`."""
    out = []
    for _ in range(400 * max(n, 1)):
        if len(out) == n:
            break
        r = rng.randint(*radius_range)
        cy, cx = rng.randint(r + 1, SIZE - r - 2), rng.randint(r + 1, SIZE - r - 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + rr + margin) ** 2 for y, x, rr in taken + out):
            out.append((cy, cx, r))
    if len(out) < n:
        raise RuntimeError("could not place the shapes")  # caller retries with another seed
    return out


def _draw_disk(img, cy, cx, r, color):
    from skimage.draw import disk
    rr, cc = disk((cy, cx), r, shape=img.shape[:2])
    img[rr, cc] = color
    return len(rr)


# ---- families: build(rng, split) -> (question, images, answer, facts)

def build_count(rng, split):
    img, photo = background(rng, split)
    color = rng.choice(list(COLORS))
    k = rng.randint(1, 9)
    other = rng.choice([c for c in COLORS if c != color])
    disks = _place_disks(rng, k + rng.randint(0, 3), (2, 4), [])
    for i, (cy, cx, r) in enumerate(disks):
        _draw_disk(img, cy, cx, r, COLORS[color] if i < k else COLORS[other])
    return f"How many {color} disks are there in `img`?", {"img": img}, k, {"color": color, "photo": photo}


def build_size(rng, split):
    img, photo = background(rng, split)
    color = rng.choice(list(COLORS))
    (cy, cx, r), (oy, ox, orad) = _place_disks(rng, 2, (3, 12), [])
    area = _draw_disk(img, cy, cx, r, COLORS[color])
    _draw_disk(img, oy, ox, orad, COLORS[rng.choice([c for c in COLORS if c != color])])
    return (f"How many pixels does the {color} disk in `img` cover?", {"img": img}, area,
            {"color": color, "photo": photo})


def _maze(rng, n):
    """A random depth-first maze of n x n cells as a (2n+1)^2 grid, True = open."""
    grid = np.zeros((2 * n + 1, 2 * n + 1), bool)
    seen = {(0, 0)}
    stack = [(0, 0)]
    grid[1, 1] = True
    while stack:
        y, x = stack[-1]
        nxt = [(y + dy, x + dx) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))
               if 0 <= y + dy < n and 0 <= x + dx < n and (y + dy, x + dx) not in seen]
        if not nxt:
            stack.pop()
            continue
        ny, nx = rng.choice(nxt)
        grid[2 * ny + 1, 2 * nx + 1] = True
        grid[y + ny + 1, x + nx + 1] = True
        seen.add((ny, nx))
        stack.append((ny, nx))
    return grid


def grid_distance(grid, start, goal) -> int:
    """BFS steps between two open squares of a grid (ground truth of the maze family)."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        y, x = queue.popleft()
        if (y, x) == goal:
            return dist[(y, x)]
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < grid.shape[0] and 0 <= nx < grid.shape[1] and grid[ny, nx] and (ny, nx) not in dist:
                dist[(ny, nx)] = dist[(y, x)] + 1
                queue.append((ny, nx))
    raise ValueError("goal not reachable")


def build_maze(rng, split):
    n = rng.choice(MAZE_CELLS[split])
    grid = _maze(rng, n)
    cells = [(2 * y + 1, 2 * x + 1) for y in range(n) for x in range(n)]
    start, goal = rng.sample(cells, 2)
    steps = grid_distance(grid, start, goal)
    img = np.where(grid[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    img[start], img[goal] = COLORS["green"], COLORS["red"]
    img = img.repeat(MAZE_BLOCK, axis=0).repeat(MAZE_BLOCK, axis=1)
    q = ("`img` shows a maze drawn on a grid of equal squares, each four pixels wide: black squares are walls, "
         "white ones are open, the green square is the start and the red one the goal. How many moves (up, down, "
         "left or right, one square each) does the shortest path from start to goal take?")
    assert MAZE_BLOCK == 4  # the question says "four pixels"
    return q, {"img": img}, steps, {"cells": n}


def build_pie(rng, split):
    from PIL import Image, ImageDraw

    k = rng.randint(3, 5)
    while True:
        cuts = sorted(rng.sample(range(8, 93), k - 1))
        shares = [b - a for a, b in zip([0] + cuts, cuts + [100])]
        if min(shares) >= 8:
            break
    names = rng.sample(list(PIE_COLORS), k)
    canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    angle = rng.uniform(0, 360)
    for name, share in zip(names, shares):
        sweep = share * 3.6
        draw.pieslice((2, 2, SIZE - 3, SIZE - 3), angle, angle + sweep, fill=PIE_COLORS[name])
        angle += sweep
    target = rng.randrange(k)
    color = names[target]
    q = (f"`img` is a pie chart on a white background; its slices are {', '.join(names)}. "
         f"What percentage of the pie is the {color} slice (a whole number)?")
    return q, {"img": np.asarray(canvas).copy()}, shares[target], {"color": color, "rgb": PIE_COLORS[color]}


def build_diff(rng, split):
    img, photo = background(rng, split)
    img2 = img.copy()
    h, w = rng.randint(6, 14), rng.randint(6, 14)
    y, x = rng.randint(0, SIZE - h), rng.randint(0, SIZE - w)
    img2[y:y + h, x:x + w] = COLORS[rng.choice(list(COLORS))]
    q = ("`img2` is a copy of `img` with one rectangular region changed. Give its bounding box as "
         "left,top,right,bottom in pixels (right and bottom exclusive).")
    return q, {"img": img, "img2": img2}, [x, y, x + w, y + h], {"photo": photo}


def build_locate(rng, split):
    img, photo = background(rng, split)
    color = rng.choice(list(COLORS))
    others = [c for c in COLORS if c != color]
    spots = _place_disks(rng, 1 + rng.randint(0, 2), (3, 3), [])
    for i, (cy, cx, _) in enumerate(spots):
        img[cy - 2:cy + 3, cx - 2:cx + 3] = COLORS[color] if i == 0 else COLORS[rng.choice(others)]
    cy, cx, _ = spots[0]
    return (f"Where is the centre of the small {color} square in `img`? Answer as x,y (column, row).",
            {"img": img}, [cx, cy], {"color": color, "photo": photo})


BUILDERS = {"count": build_count, "size": build_size, "maze": build_maze, "pie": build_pie, "diff": build_diff,
            "locate": build_locate}


def make_task(family: str, split: str, index: int, seed: int = 0) -> ImageTask:
    """Task `index` of a family and split: a pure function of its arguments."""
    if family not in BUILDERS:
        raise ValueError(f"unknown image-task family {family!r}; expected one of {FAMILIES}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    for attempt in range(20):
        rng = random.Random(f"{seed}:{family}:{split}:{index}:{attempt}")
        try:
            q, images, answer, facts = BUILDERS[family](rng, split)
        except RuntimeError:
            continue
        return ImageTask(_task_id(family, split, index, seed), family, split, q, images, answer, facts)
    raise RuntimeError(f"could not build {family} task {index}")


def media_pixels(image: np.ndarray) -> np.ndarray:
    """An image as the pre-training loader feeds it: curation's NaViT resize and zero padding
    (sides multiples of 28), with the tiny curation's patch budget."""
    from curation.image_text import ImageCurationConfig, navit_resize

    cfg = ImageCurationConfig()
    return navit_resize(image, cfg.patch_limit, cfg.side_limit, cfg.min_side)


# ---- answers

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed(text: str) -> str | None:
    found = _BOXED.findall(text or "")
    return found[-1].strip() if found else None


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def is_correct(family: str, answer_text: str | None, truth) -> bool:
    """The family's verifier on the final \\boxed{} answer (None or unparsable: wrong)."""
    if not answer_text:
        return False
    nums = _numbers(answer_text)
    if family in ("count", "maze"):
        return len(nums) == 1 and nums[0] == truth
    if family == "size":
        return len(nums) == 1 and abs(nums[0] - truth) <= 0.05 * truth
    if family == "pie":
        return len(nums) == 1 and abs(nums[0] - truth) <= 2
    if family == "locate":
        return len(nums) == 2 and abs(nums[0] - truth[0]) <= 2 and abs(nums[1] - truth[1]) <= 2
    if family == "diff":
        return len(nums) == 4 and box_iou(nums, truth) >= 0.5
    raise ValueError(f"unknown family {family!r}")


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def format_answer(family: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(v)) for v in value)
    return str(int(value))
