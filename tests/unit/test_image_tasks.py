"""Image tasks: ground truth from construction agrees with independent measurements of the
rendered pixels (scipy's graph search for mazes, connected components for counts, exact pixel
counts for pies), questions never state the answer, splits use different photos, verifiers
reject empty and wrong answers, and the GSM8K program-of-thought conversion."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import csgraph, lil_matrix

from agents.envs.image_tasks import (
    COLORS,
    FAMILIES,
    MAZE_BLOCK,
    PIE_COLORS,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    box_iou,
    is_correct,
    make_task,
)
from agents.envs.teachers import answer_from_output, n_variants, teacher
from agents.sft_data import gold_leaks, pot_program


def test_tasks_are_deterministic_and_splits_use_different_photos():
    a, b = make_task("count", "train", 3, seed=1), make_task("count", "train", 3, seed=1)
    assert a.id == b.id and np.array_equal(a.images["img"], b.images["img"]) and a.answer == b.answer
    assert not np.array_equal(make_task("count", "train", 4, seed=1).images["img"], a.images["img"])
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    assert {make_task("count", "test", i).facts["photo"] for i in range(20)} <= set(TEST_PHOTOS)
    with pytest.raises(ValueError, match="unknown image-task family"):
        make_task("ocr", "train", 0)


@pytest.mark.parametrize("index", range(12))
def test_count_truth_matches_connected_components_of_the_colour(index):
    task = make_task("count", "train", index)
    img = task.images["img"]
    mask = (img == COLORS[task.facts["color"]]).all(axis=-1)
    assert ndimage.label(mask)[1] == task.answer


@pytest.mark.parametrize("split,index", [("train", i) for i in range(6)] + [("test", i) for i in range(6)])
def test_maze_truth_matches_scipy_shortest_path(split, index):
    task = make_task("maze", split, index)
    grid = task.images["img"][::MAZE_BLOCK, ::MAZE_BLOCK].astype(int)
    start = tuple(np.argwhere((grid == COLORS["green"]).all(-1))[0])
    goal = tuple(np.argwhere((grid == COLORS["red"]).all(-1))[0])
    free = (grid.min(-1) > 0)
    h, w = free.shape
    graph = lil_matrix((h * w, h * w))
    for y, x in zip(*np.nonzero(free)):
        for dy, dx in ((1, 0), (0, 1)):
            if y + dy < h and x + dx < w and free[y + dy, x + dx]:
                graph[y * w + x, (y + dy) * w + x + dx] = 1
    dist = csgraph.shortest_path(graph.tocsr(), directed=False, indices=start[0] * w + start[1], unweighted=True)
    assert dist[goal[0] * w + goal[1]] == task.answer
    if split == "test":
        assert task.facts["cells"] > max(3, 4, 5)  # larger than any training maze


@pytest.mark.parametrize("index", range(8))
def test_pie_truth_matches_pixel_shares(index):
    task = make_task("pie", "train", index)
    img = task.images["img"]
    pie = (img != 255).any(-1).sum()
    share = 100 * (img == PIE_COLORS[task.facts["color"]]).all(-1).sum() / pie
    assert abs(share - task.answer) <= 2


def test_diff_and_locate_and_size_truth():
    d = make_task("diff", "test", 0)
    ys, xs = np.nonzero((d.images["img"] != d.images["img2"]).any(-1))
    assert box_iou([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], d.answer) > 0.5
    loc = make_task("locate", "train", 0)
    ys, xs = np.nonzero((loc.images["img"] == COLORS[loc.facts["color"]]).all(-1))
    assert (round(xs.mean()), round(ys.mean())) == tuple(loc.answer)
    size = make_task("size", "train", 0)
    assert (size.images["img"] == COLORS[size.facts["color"]]).all(-1).sum() == size.answer


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_never_state_the_answer(family):
    for i in range(30):
        task = make_task(family, "train", i)
        answer = task.answer if isinstance(task.answer, list) else [task.answer]
        row = {"messages": [{"role": "user", "content": task.question},
                            {"role": "assistant", "content": "\\boxed{" + ",".join(map(str, answer)) + "}"}]}
        assert gold_leaks(row) == [], (task.question, task.answer)


@pytest.mark.parametrize("family,truth,good,bad", [
    ("count", 4, "4", ["", "5", "4,4", "four"]),
    ("maze", 9, "9", ["8", "", "9 or 10"]),
    ("size", 100, "104", ["106", "", "0"]),
    ("pie", 30, "32", ["33", ""]),
    ("locate", [10, 20], "11,19", ["10", "13,20", ""]),
    ("diff", [0, 0, 10, 10], "1,1,10,10", ["0,0,64,64", "", "0,0,10"]),
])
def test_verifiers(family, truth, good, bad):
    assert is_correct(family, good, truth)
    for text in bad:
        assert not is_correct(family, text, truth), text
    assert not is_correct(family, None, truth)


def test_every_family_has_several_teacher_variants_that_differ():
    for family in FAMILIES:
        task = make_task(family, "train", 0)
        assert n_variants(family) >= 3
        programs = {"\n".join(teacher(task, v)[1]) for v in range(n_variants(family))}
        assert len(programs) == n_variants(family)


def test_answer_from_output():
    assert answer_from_output("count", "(64, 64, 3)\n7\n") == "7"
    assert answer_from_output("locate", "(12, 30)\n") == "12,30"
    assert answer_from_output("diff", "[1, 2, 3, 4]\n") == "1,2,3,4"
    assert answer_from_output("count", "") is None and answer_from_output("locate", "5\n") is None


def test_pot_program_from_calculator_annotations():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    code = pot_program(solution)
    assert code == "step1 = 48/2\nstep2 = 48+24\nstep2"
    ns: dict = {}
    exec(code.rsplit("\n", 1)[0], ns)
    assert ns["step2"] == 72
    assert pot_program("no annotations here\n#### 3") is None
