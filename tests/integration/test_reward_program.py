"""Program-of-thought rewards run the response's program in the sandboxed kernel."""

import pytest

from agents.rewards.program import program_score

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("response,correct", [
    ("```python\nprint(6 * 7)\n```", True),
    ("```python\nx = 40\nx + 2\n```", True),  # the displayed last expression counts
    ("```python\nprint(41)\n```", False),
    ("```python\nraise SystemExit(0)\nprint(42)\n```", False),
    ("```python\nimport os; os.system('echo 42')\n```", False),
    ("The answer is 42.", False),  # no program: the PoT reward needs one
    ("```python\nwhile True: pass\n```", False),
])
def test_program_reward(kernel, response, correct):
    assert program_score(response, "42", kernel).correct is correct
