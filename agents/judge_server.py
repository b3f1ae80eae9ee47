"""An OpenAI-compatible chat-completions endpoint in front of a local checkpoint, so a judge (or
any policy) trained here can be called like a hosted model, and HTTPJudge can be tested against
a real server on 127.0.0.1. On a GPU box, vLLM or SGLang serve the same API.

    python -m agents.judge_server --checkpoint <run dir>/step_000100 --mixture <mixture.json> --port 8000

Only what HTTPJudge uses: POST /v1/chat/completions with `messages`, `max_tokens` and
`temperature` (greedy at 0); text messages only. Requests are served one at a time (the engine's
event loop is per call); a judge is small and the calls are short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agents.chat import parse_assistant, render
from agents.engine import BatchingEngine, GenerateRequest, SamplingParams


def make_server(model, vocab, host: str = "127.0.0.1", port: int = 0, name: str = "k25-local") -> ThreadingHTTPServer:
    engine = BatchingEngine(model, slots=4, decode=vocab.decode)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the caller logs what it needs
            pass

        def _reply(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._reply(404, {"error": {"message": f"no route {self.path}"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = [{"role": m["role"], "content": m["content"]} for m in request["messages"]]
                if not all(isinstance(m["content"], str) for m in messages):
                    raise ValueError("only text message contents are served")
                ids = render(messages, vocab, add_generation_prompt=True)
                sampling = SamplingParams(int(request.get("max_tokens", 64)), float(request.get("temperature", 0.0)),
                                          1.0, int(request.get("seed", 0)), stop_ids=(vocab.im_end, vocab.eos))
            except (KeyError, TypeError, ValueError) as e:
                return self._reply(400, {"error": {"message": f"bad request: {e}"}})
            with lock:
                out = asyncio.run(engine.generate(GenerateRequest(ids, sampling=sampling)))
            text = parse_assistant(out.ids, vocab).content
            self._reply(200, {"object": "chat.completion", "model": name, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": out.finish_reason}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out.ids)}})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    from curation.mixture import read_mixture
    from infra.refs import CheckpointRef
    from training import checkpoint
    from training.data import load_vocab

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mixture", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    model = checkpoint.load_model(CheckpointRef.at(args.checkpoint))
    server = make_server(model.eval(), load_vocab(read_mixture(args.mixture)), args.host, args.port)
    print(f"serving on http://{args.host}:{server.server_address[1]}/v1/chat/completions", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
