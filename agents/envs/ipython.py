"""The IPython image environment: one trajectory's kernel session holding its task's images,
with the `ipython` tool, in one of three arms (see evaluation/agent_suites.py): `tool` (the
image described as text, its pixels in the kernel), `no_tool` (the tool answers "disabled") and
`media` (the image as media tokens, no description). RL's tool domain and the ipython_tools
suite use the same environment and the same verifier.
"""

from __future__ import annotations

import asyncio

import torch

from agents.envs.image_tasks import ImageTask, boxed, is_correct, media_pixels
from agents.kernel import Kernel, Session
from agents.loop import AgentResult, RewardBreakdown, ToolResult
from agents.sft_data import SYSTEM, user_message

ARMS = ("tool", "no_tool", "media")
DISABLED = "Error: the ipython tool is disabled in this run."


class IPythonImageEnv:
    """One trajectory's environment: a kernel session holding the task's images."""

    def __init__(self, kernel: Kernel, arm: str):
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        self.kernel, self.arm = kernel, arm
        self.session: Session | None = None
        self.task: ImageTask | None = None
        self.tools = {"ipython": self._ipython}
        # Calls of one turn share the session's state: they run one after another, in the order
        # the model wrote them (asyncio.Lock is first come, first served).
        self._turn_order = asyncio.Lock()

    def reset(self, task: ImageTask) -> tuple[list[dict], list]:
        self.task = task
        self.session = self.kernel.open_session()
        for name, pixels in task.images.items():
            self.session.put(name, pixels)
        if self.arm == "media":
            media = [torch.from_numpy(media_pixels(a).copy()) for a in task.images.values()]
            user = {"role": "user", "content": user_message(task, with_description=False), "media": media}
        else:
            user = {"role": "user", "content": user_message(task)}
        return [{"role": "system", "content": SYSTEM}, user], list(user.get("media", []))

    async def _ipython(self, arguments: dict) -> ToolResult:
        if self.arm == "no_tool":
            return ToolResult(DISABLED, ok=False)
        code = arguments.get("code")
        if not isinstance(code, str):
            return ToolResult("Error: the ipython tool takes {\"code\": <string>}", ok=False)
        async with self._turn_order:
            result = await asyncio.to_thread(self.session.run, code)
        return ToolResult(result.observation(), ok=result.ok)

    def verify(self, result: AgentResult) -> RewardBreakdown:
        answer = boxed(result.final_text)
        correct = is_correct(self.task.family, answer, self.task.answer)
        return RewardBreakdown(float(correct), correct, {"answer": answer})

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
