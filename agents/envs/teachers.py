"""Teacher programs for the image tasks: several variants per family (different names, step
order and helpers), so no single string can be memorised. A teacher only writes code; the
numbers in a trace come from running that code in the sandboxed kernel (`sft_tool_data`).

`teacher(task, variant)` -> (a one-line plan, [cell code, ...]); the answer is read from the
last cell's displayed output by `answer_from_output`.
"""

from __future__ import annotations

import re

from agents.envs.image_tasks import CHANNEL, MAZE_BLOCK, ImageTask


def _count(task: ImageTask, v: int):
    c = CHANNEL[task.facts["color"]]
    color = task.facts["color"]
    others = [i for i in range(3) if i != c]
    if v == 0:
        return (f"I will mask the {color} pixels and count connected blobs.",
                [f"import numpy as np\nfrom scipy import ndimage\nrgb = img.astype(int)\n"
                 f"mask = rgb[..., {c}] - rgb[..., {others}].max(axis=-1) > 100\nlabels, n = ndimage.label(mask)\nint(n)"])
    if v == 1:
        return (f"Threshold the {color} channel against the others, then label the regions.",
                [f"from skimage import measure\nimport numpy as np\nx = img.astype(np.int16)\n"
                 f"{color} = (x[:, :, {c}] - np.maximum(x[:, :, {others[0]}], x[:, :, {others[1]}])) > 100\n"
                 f"len(measure.regionprops(measure.label({color})))"])
    if v == 2:
        return ("First look at the array, then count the coloured components.",
                ["img.shape, img.dtype",
                 f"from scipy import ndimage\nimport numpy as np\nd = img.astype(int)\n"
                 f"m = (d[..., {c}] > 150) & (d[..., {others[0]}] < 100) & (d[..., {others[1]}] < 100)\n"
                 "int(ndimage.label(m)[1])"])
    return ("A helper that counts blobs of one channel.",
            [f"import numpy as np\nfrom scipy import ndimage\n\ndef count_blobs(image, ch):\n"
             "    v = image.astype(int)\n    rest = np.delete(v, ch, axis=2).max(axis=2)\n"
             "    return int(ndimage.label(v[..., ch] - rest > 100)[1])\n\n"
             f"count_blobs(img, {c})"])


def _size(task: ImageTask, v: int):
    c = CHANNEL[task.facts["color"]]
    color = task.facts["color"]
    others = [i for i in range(3) if i != c]
    if v == 0:
        return (f"Mask the {color} pixels and sum the mask.",
                [f"import numpy as np\nrgb = img.astype(int)\nmask = rgb[..., {c}] - rgb[..., {others}].max(axis=-1) > 100\n"
                 "int(mask.sum())"])
    if v == 1:
        return ("Count the pixels of the largest region of that colour.",
                [f"import numpy as np\nfrom skimage import measure\nx = img.astype(np.int16)\n"
                 f"sel = (x[..., {c}] > 150) & (x[..., {others[0]}] < 100) & (x[..., {others[1]}] < 100)\n"
                 "regions = measure.regionprops(measure.label(sel))\nint(max(r.area for r in regions))"])
    return ("Check the shape first, then count.",
            ["img.shape",
             f"import numpy as np\nd = img.astype(int)\n{color} = np.delete(d, {c}, axis=2).max(axis=2) < d[..., {c}] - 100\n"
             f"int(np.count_nonzero({color}))"])


def _maze(task: ImageTask, v: int):
    b = MAZE_BLOCK
    grid_code = (f"import numpy as np\ncells = img[::{b}, ::{b}].astype(int)\n"
                 "green = (cells[..., 1] > 150) & (cells[..., 0] < 100)\nred = (cells[..., 0] > 150) & (cells[..., 1] < 100)\n"
                 "open_ = cells.min(axis=-1) > 200\nopen_ |= green | red\n")
    bfs = ("from collections import deque\nstart = tuple(np.argwhere(green)[0])\ngoal = tuple(np.argwhere(red)[0])\n"
           "dist = {start: 0}\nq = deque([start])\nwhile q:\n    y, x = q.popleft()\n"
           "    for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):\n"
           "        if 0 <= ny < open_.shape[0] and 0 <= nx < open_.shape[1] and open_[ny, nx] and (ny, nx) not in dist:\n"
           "            dist[(ny, nx)] = dist[(y, x)] + 1\n            q.append((ny, nx))\n")
    if v == 0:
        return ("Binarise the maze into squares, then run a BFS from start to goal.",
                [grid_code + bfs + "dist[goal]"])
    if v == 1:
        return ("Sample one pixel per square, then breadth-first search.",
                [grid_code + "open_.shape", bfs + "int(dist[goal])"])
    return ("Grow the reachable set step by step from the start until it reaches the goal.",
            [grid_code + "from scipy import ndimage\nreach = green.copy()\nsteps = 0\n"
             "cross = ndimage.generate_binary_structure(2, 1)\nwhile not (reach & red).any():\n"
             "    reach = ndimage.binary_dilation(reach, cross) & open_\n    steps += 1\nsteps"])


def _pie(task: ImageTask, v: int):
    r, g, b = task.facts["rgb"]
    color = task.facts["color"]
    if v == 0:
        return (f"Count the {color} pixels against all non-white pixels.",
                [f"import numpy as np\nslice_ = (img == ({r}, {g}, {b})).all(axis=-1)\npie = (img != 255).any(axis=-1)\n"
                 "round(100 * slice_.sum() / pie.sum())"])
    if v == 1:
        return ("Mask the slice by its hue in HSV space and compare pixel counts.",
                [f"import numpy as np\nfrom skimage.color import rgb2hsv\nhsv = rgb2hsv(img)\n"
                 f"ref = rgb2hsv(np.array([[[{r}, {g}, {b}]]], dtype=np.uint8))[0, 0]\n"
                 "dh = np.abs(hsv[..., 0] - ref[0])\ndh = np.minimum(dh, 1 - dh)\n"
                 "inside = hsv[..., 1] > 0.3\nmine = inside & (dh < 0.02) & (np.abs(hsv[..., 1] - ref[1]) < 0.1)\n"
                 "int(round(100 * mine.sum() / inside.sum()))"])
    return ("Look at the chart size, then measure the share of the slice colour.",
            ["img.shape",
             f"import numpy as np\ncolour = np.array([{r}, {g}, {b}])\nhits = np.all(img == colour, axis=2).sum()\n"
             "total = np.any(img < 250, axis=2).sum()\nint(round(hits * 100 / total))"])


def _diff(task: ImageTask, v: int):
    if v == 0:
        return ("Take the per-pixel difference, threshold it and read the bounding box.",
                ["import numpy as np\nd = np.abs(img.astype(int) - img2.astype(int)).max(axis=-1) > 30\n"
                 "ys, xs = np.nonzero(d)\n[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]"])
    if v == 1:
        return ("Difference map, then the largest region's box.",
                ["import numpy as np\nfrom skimage import measure\n"
                 "diff = np.abs(img.astype(np.int16) - img2.astype(np.int16)).sum(axis=2) > 40\n"
                 "r = max(measure.regionprops(measure.label(diff)), key=lambda p: p.area)\n"
                 "y0, x0, y1, x1 = r.bbox\n[x0, y0, x1, y1]"])
    return ("Find the changed rows and columns.",
            ["import numpy as np\nchanged = (img != img2).any(axis=2)\nrows = np.where(changed.any(axis=1))[0]\n"
             "cols = np.where(changed.any(axis=0))[0]\n[int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]"])


def _locate(task: ImageTask, v: int):
    c = CHANNEL[task.facts["color"]]
    color = task.facts["color"]
    others = [i for i in range(3) if i != c]
    if v == 0:
        return (f"Mask the {color} pixels and take their mean position.",
                [f"import numpy as np\nrgb = img.astype(int)\nmask = rgb[..., {c}] - rgb[..., {others}].max(axis=-1) > 100\n"
                 "ys, xs = np.nonzero(mask)\nround(xs.mean()), round(ys.mean())"])
    if v == 1:
        return ("The centroid of the coloured region.",
                [f"import numpy as np\nfrom scipy import ndimage\nx = img.astype(np.int16)\n"
                 f"sel = (x[..., {c}] > 150) & (x[..., {others[0]}] < 100) & (x[..., {others[1]}] < 100)\n"
                 "cy, cx = ndimage.center_of_mass(sel)\nint(round(cx)), int(round(cy))"])
    return ("Inspect, then locate the square by its colour.",
            ["img.shape",
             f"import numpy as np\nd = img.astype(int)\nm = d[..., {c}] - np.delete(d, {c}, axis=2).max(axis=2) > 100\n"
             "pts = np.argwhere(m)\nint(pts[:, 1].mean().round()), int(pts[:, 0].mean().round())"])


TEACHERS = {"count": (_count, 4), "size": (_size, 3), "maze": (_maze, 3), "pie": (_pie, 3), "diff": (_diff, 3),
            "locate": (_locate, 3)}


def teacher(task: ImageTask, variant: int) -> tuple[str, list[str]]:
    fn, n = TEACHERS[task.family]
    return fn(task, variant % n)


def n_variants(family: str) -> int:
    return TEACHERS[family][1]


def answer_from_output(family: str, output: str) -> str | None:
    """The answer the teacher's last cell displayed, formatted for \\boxed{} (None: no number)."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    nums = re.findall(r"-?\d+(?:\.\d+)?", lines[-1])
    want = {"locate": 2, "diff": 4}.get(family, 1)
    if len(nums) != want:
        return None
    return ",".join(str(int(round(float(n)))) for n in nums)
