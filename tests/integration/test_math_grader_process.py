"""Math-Verify off the main thread: `math_score` grades in a spawned helper process there (an
integration test: it starts a process)."""

import pytest

from agents.rewards.math import math_score

pytestmark = pytest.mark.integration


def test_a_pathological_answer_off_the_main_thread_is_graded_not_hung():
    """Math-Verify's timeouts need SIGALRM, i.e. the main thread; from a worker thread (a Dagster
    op, the scoring pool) math_score grades in a helper process, so a power tower returns."""
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(math_score(r"$9^{9^{9^{9}}}$", "2")), daemon=True)
    worker.start()
    worker.join(120)  # a hang guard, not a timing claim
    assert not worker.is_alive(), "math_score hung off the main thread"
    assert out[0].correct is False
    thread_result = []
    t = threading.Thread(target=lambda: thread_result.append(math_score("The answer is **18**.", "18")))
    t.start()
    t.join(120)
    assert thread_result[0].correct is True
