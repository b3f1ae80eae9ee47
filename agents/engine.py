"""The rollout engine: continuous batching over a slot KV cache, with log-probs and images.

One async interface for everything that samples from the policy (RL rollouts, agent loops,
the swarm's sub-agents, evaluation):

    out = await engine.generate(GenerateRequest(ids, media, sampling, keep=True))
    out = await engine.generate(GenerateRequest(tool_result_ids, media, sampling, session=out.session))
    outs = await engine.generate_group(request, k=8)      # one prefill shared by 8 samples
    engine.release(out.session)

How it works (and why it is ours): vLLM/SGLang MLA kernels do not accept our small MLA shapes
(POSTTRAIN.md §6), and a CPU engine is needed for the tiny profile anyway.
- Each live request owns a slot of a `SlotKVCache`: per layer a [slots, max_len, latent] buffer
  of MLA latents, so a request that pauses for a tool keeps its context cached and a tool result
  appended to it prefills only the new ids.
- A scheduler tick runs ONE forward over every pending piece of work: new prompts and appended
  tool results (prefill rows of any length) and one next token for every decoding request,
  each row at its own offset in its own slot, masked to its own keys.
- `generate_group` prefills a prompt once and copies its latent rows to k slots (cheap: the
  latent is 576 values per token in K2), then the k samples decode independently.
- Every request samples with its own `torch.Generator` seeded from `SamplingParams.seed`, so its
  tokens do not depend on what else is in the batch (and a rollout is reproducible on resume).
- Log-probs are those of the distribution sampled from: log_softmax(logits / temperature)
  (raw logits at temperature 0), before top-p truncation; the trainer's re-forward at the same
  temperature gives the same numbers.
- Images and video chunks: a prompt or tool result carries `media` (pixel tensors, in
  placeholder order) and its ids hold each item's `<|media_pad|>` run; prefill splices the
  vision tokens exactly as training does (`K25Model.embed`).

The forward runs in a worker thread so the event loop keeps serving tools while the model works.
The engine reads the live module: `update_weights(version)` marks new weights (colocated RL).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from dataclasses import dataclass, field

import torch

from model.multimodal import K25Model

FINISH_STOP, FINISH_LENGTH, FINISH_CONTEXT = "stop", "length", "context"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # needs the engine's `decode`


@dataclass
class GenerateRequest:
    ids: list[int]  # a new prompt, or (with `session`) the ids to append before generating
    media: list[torch.Tensor] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    session: int | None = None  # continue this live request (its context stays cached)
    keep: bool = False  # keep the slot after this turn so a later request can append


@dataclass(frozen=True)
class TokenOutput:
    ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int
    session: int | None  # set when the slot was kept
    receipt: str  # engine signature over (ids, logprobs): the provenance check verifies it


class SlotKVCache:
    """MLA latent cache with one row of `max_len` tokens per slot. Looks like `LatentKVCache` to
    the attention layers; the engine sets, before each forward, which slot each batch row writes
    (`rows`), at which offset (`offsets`) and how many of its new positions are real (`n_new`)."""

    def __init__(self, n_layers: int, slots: int, max_len: int, width: int, device, dtype):
        self.max_len = max_len
        self.buffers = [torch.zeros(slots, max_len, width, device=device, dtype=dtype) for _ in range(n_layers)]
        self.rows = self.offsets = self.n_new = None
        self.key_width = 0

    def configure(self, rows: torch.Tensor, offsets: torch.Tensor, n_new: torch.Tensor) -> None:
        self.rows, self.offsets, self.n_new = rows, offsets, n_new
        self.key_width = int((offsets + n_new).max())
        t = torch.arange(int(n_new.max()), device=rows.device)
        self._r, self._t = (t[None] < n_new[:, None]).nonzero(as_tuple=True)
        self._pos = offsets[self._r] + self._t

    @property
    def length(self) -> int:
        """Attention takes its cached-keys path when this is non-zero; positions come from the
        engine, so only whether any row has cached tokens matters (and the rope table size)."""
        return int(self.offsets.max())

    def update(self, layer: int, latent: torch.Tensor) -> torch.Tensor:
        buf = self.buffers[layer]
        buf[self.rows[self._r], self._pos] = latent[self._r, self._t]
        return buf[self.rows, : self.key_width]

    def advance(self, n: int) -> None:
        pass  # per-slot lengths are the engine's

    def copy_slot(self, src: int, dst: int, n: int) -> None:
        for buf in self.buffers:
            buf[dst, :n] = buf[src, :n]


@dataclass
class _Live:
    """A request being served: its slot, what is cached there, and what it has produced."""
    slot: int
    sampling: SamplingParams
    generator: torch.Generator
    cached: int = 0  # tokens of this slot already in the cache
    todo: list[int] = field(default_factory=list)  # ids to feed in the next tick
    media: list[torch.Tensor] = field(default_factory=list)  # vision items of `todo`
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    future: asyncio.Future | None = None
    keep: bool = False
    fork_to: list["_Live"] = field(default_factory=list)  # group members waiting on this prefill
    session: int = -1


def request_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def group_seed(seed: int, member: int) -> int:
    """A distinct, reproducible seed for member `member` of a group (independent streams)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{member}".encode()).digest()[:8], "little")


class BatchingEngine:
    def __init__(self, model: K25Model, slots: int = 16, max_len: int | None = None, decode=None,
                 version: int = 0):
        """`decode(ids) -> str` is needed only for stop strings (e.g. `Vocab.decode`)."""
        self.model = model.eval()
        self.cfg = model.cfg
        self.max_len = max_len or self.cfg.max_seq_len
        weight = model.backbone.head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cache = SlotKVCache(self.cfg.n_layers, slots, self.max_len,
                                 self.cfg.kv_lora_rank + self.cfg.qk_rope_head_dim, self.device, self.dtype)
        self.free = list(range(slots))[::-1]
        self.sessions: dict[int, _Live] = {}  # kept slots between turns
        self.running: list[_Live] = []
        self.waiting: list[tuple[GenerateRequest, int, asyncio.Future]] = []
        self.decode = decode
        self.version = version
        self._key = os.urandom(32)
        self._next_session = 0
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self.ticks = 0  # forwards run (for benchmarks and tests)
        self.pad_id = 1 if model.media_pad_id == 0 else 0

    # ---- public interface

    async def generate(self, request: GenerateRequest) -> TokenOutput:
        return (await self._submit(request, 1))[0]

    async def generate_group(self, request: GenerateRequest, k: int) -> list[TokenOutput]:
        """k samples of one prompt: prefilled once, member i seeded with group_seed(seed, i)."""
        if request.session is not None:
            raise ValueError("a group starts from a new prompt, not a live session")
        return await self._submit(request, k)

    def release(self, session: int | None) -> None:
        live = self.sessions.pop(session, None) if session is not None else None
        if live is not None:
            self.free.append(live.slot)
            self._poke()

    def update_weights(self, version: int) -> None:
        """The module's weights changed (colocated trainer): outputs from now on carry `version`."""
        self.version = version

    def verify(self, output: TokenOutput) -> bool:
        return hmac.compare_digest(output.receipt, self._sign(output.ids, output.logprobs))

    @property
    def live_sessions(self) -> int:
        return len(self.sessions)

    # ---- scheduling

    async def _submit(self, request: GenerateRequest, k: int) -> list[TokenOutput]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(k)]
        self._validate(request)
        self.waiting.append((request, k, futures))
        self._ensure_loop()
        self._poke()
        return list(await asyncio.gather(*futures))

    def _validate(self, request: GenerateRequest) -> None:
        if request.session is not None and request.session not in self.sessions:
            raise ValueError(f"session {request.session} is not live (released, or never kept)")
        if request.session is None and not request.ids:
            raise ValueError("a new request needs prompt ids")
        n_pad = sum(int(t == self.model.media_pad_id) for t in request.ids)
        if n_pad and not request.media:
            raise ValueError(f"{n_pad} media placeholders but no media")

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._admit()
            self._overflowing()
            if not self.running:  # idle, or every slot is held by a paused session
                self._wake.clear()
                await self._wake.wait()
                continue
            rows = [live for live in self.running if live.todo]
            try:
                results = await asyncio.to_thread(self._tick, rows)
            except Exception as e:  # a failed forward fails its requests, not the engine
                for live in rows:
                    self._fail(live, e)
                continue
            self._advance(rows, results)

    def _admit(self) -> None:
        still = []
        for request, k, futures in self.waiting:
            if request.session is not None:
                live = self.sessions.pop(request.session)
                live.todo = ([live.out[-1]] if live.out else []) + list(request.ids)
                live.media, live.sampling, live.keep = list(request.media), request.sampling, request.keep
                live.out, live.logprobs, live.future = [], [], futures[0]
                live.generator = request_generator(request.sampling.seed)
                self.running.append(live)
                continue
            if len(self.free) < k:
                still.append((request, k, futures))
                continue
            members = []
            for i, future in enumerate(futures):
                seed = request.sampling.seed if k == 1 else group_seed(request.sampling.seed, i)
                members.append(_Live(self.free.pop(), request.sampling, request_generator(seed),
                                     future=future, keep=request.keep))
            leader = members[0]
            leader.todo, leader.media, leader.fork_to = list(request.ids), list(request.media), members[1:]
            self.running.append(leader)
        self.waiting = still

    @torch.no_grad()
    def _tick(self, rows: list[_Live]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One forward over every row's pending ids; returns per row (next-token logits, [V] fp32)."""
        self.ticks += 1
        n_new = [len(r.todo) for r in rows]
        T = max(n_new)
        tokens = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : n_new[i]] = torch.tensor(r.todo)
        tokens = tokens.to(self.device)
        offsets = torch.tensor([r.cached for r in rows], device=self.device)
        counts = torch.tensor(n_new, device=self.device)
        positions = offsets[:, None] + torch.arange(T, device=self.device)[None]
        self.cache.configure(torch.tensor([r.slot for r in rows], device=self.device), offsets, counts)
        keys = torch.arange(self.cache.key_width, device=self.device)
        # row i, query t sees its own slot's keys up to its own position; padded queries see
        # their row's real keys (never an empty row) and their outputs are dropped
        limit = torch.minimum(positions, (offsets + counts - 1)[:, None])
        mask = (keys[None, None] <= limit[:, :, None])[:, None]
        h = self._embed(tokens, rows, n_new)
        hidden = self.model.backbone.forward_hidden(h, mask, positions, self.cache)
        last = hidden[torch.arange(len(rows), device=self.device), counts - 1]
        logits = self.model.backbone.head(last).float()
        logits[:, self.model.media_pad_id] = float("-inf")  # placeholders come from data only
        return [self._sample(r, logits[i]) for i, r in enumerate(rows)]

    def _embed(self, tokens: torch.Tensor, rows: list[_Live], n_new: list[int]) -> torch.Tensor:
        if not any(r.media for r in rows):
            return self.model.backbone.embed(tokens)
        pieces = []
        for i, r in enumerate(rows):
            real = self.model.embed(tokens[i: i + 1, : n_new[i]], r.media or None)
            pad = self.model.backbone.embed(tokens[i: i + 1, n_new[i]:])
            pieces.append(torch.cat([real, pad], 1))
        return torch.cat(pieces)

    def _sample(self, live: _Live, logits: torch.Tensor):
        """(token, logprob) for the leader and, for a group prefill, every member."""
        members = [live] + live.fork_to
        picks = []
        for m in members:
            t = m.sampling.temperature
            scaled = logits / t if t > 0 else logits
            logp = torch.log_softmax(scaled, -1)
            if t <= 0:
                token = int(scaled.argmax())
            else:
                probs = logp.exp()
                if m.sampling.top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < m.sampling.top_p
                    probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=m.generator))
            picks.append((token, float(logp[token])))
        return picks

    def _advance(self, rows: list[_Live], results) -> None:
        for live, picks in zip(rows, results):
            live.cached += len(live.todo)
            live.todo, live.media = [], []
            members = [live] + live.fork_to
            for member in live.fork_to:  # the group's prompt is cached once: copy it to each member
                self.cache.copy_slot(live.slot, member.slot, live.cached)
                member.cached = live.cached
                self.running.append(member)
            live.fork_to = []
            for member, (token, logp) in zip(members, picks):
                self._emit(member, token, logp)

    def _overflowing(self) -> None:
        """Requests whose pending ids do not fit their slot end now with finish "context" and
        no tokens (e.g. a tool result that would overflow the context), the batch goes on."""
        for live in [r for r in self.running if r.todo and r.cached + len(r.todo) > self.max_len]:
            for member in [live] + live.fork_to:
                if member in self.running:
                    self.running.remove(member)
                self.free.append(member.slot)
                if not member.future.done():  # a caller may have given up (cancelled) meanwhile
                    member.future.set_result(TokenOutput([], [], FINISH_CONTEXT, self.version, None, self._sign([], [])))
            live.fork_to = []

    def _emit(self, live: _Live, token: int, logp: float) -> None:
        live.out.append(token)
        live.logprobs.append(logp)
        finish = self._finish_reason(live, token)
        if finish is None:
            live.todo = [token]
            return
        self.running.remove(live)
        output = TokenOutput(list(live.out), list(live.logprobs), finish, self.version,
                             None, self._sign(live.out, live.logprobs))
        if live.keep and finish != FINISH_CONTEXT:
            live.session = self._next_session
            self._next_session += 1
            self.sessions[live.session] = live
            output = TokenOutput(output.ids, output.logprobs, finish, self.version, live.session, output.receipt)
        else:
            self.free.append(live.slot)
        if not live.future.done():
            live.future.set_result(output)

    def _finish_reason(self, live: _Live, token: int) -> str | None:
        s = live.sampling
        if token in s.stop_ids:
            return FINISH_STOP
        if s.stop_strings:
            if self.decode is None:
                raise ValueError("stop strings need the engine's `decode`")
            tail = self.decode(live.out[-32:])
            if any(stop in tail for stop in s.stop_strings):
                return FINISH_STOP
        if len(live.out) >= s.max_new_tokens:
            return FINISH_LENGTH
        if live.cached + 1 >= self.max_len:  # prompt + output fill the context
            return FINISH_CONTEXT
        return None

    def _fail(self, live: _Live, error: Exception) -> None:
        for member in [live] + live.fork_to:
            if member in self.running:
                self.running.remove(member)
            self.free.append(member.slot)
            if member.future is not None and not member.future.done():
                member.future.set_exception(error)
        live.fork_to = []

    def _sign(self, ids: list[int], logprobs: list[float]) -> str:
        body = ",".join(map(str, ids)).encode() + b"|" + ",".join(f"{x:.9g}" for x in logprobs).encode()
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()
