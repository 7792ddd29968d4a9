"""Load test of the API server: aggregate tokens/s with 1, 4 and 16 concurrent streaming clients.

    python scripts/bench_serve.py                          # starts its own server: random 256 x 4 model
    python scripts/bench_serve.py --base_url http://127.0.0.1:8998/v1 --api_key secret

Each of C clients sends --requests_per_client streaming chat requests one after another (a short prompt,
--max_tokens each, sampled at --temperature) and the phase ends when all have finished: aggregate tokens/s is every
completion token (from `usage`) over the phase's wall time. Continuous batching should make 16 clients
several times faster in aggregate than 1 (the floor checked here: 4x), while each client gets a bit slower.
Localhost only: the server it starts binds 127.0.0.1 and stops when the bench ends.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `python scripts/<name>.py`: the packages sit beside scripts/

PROMPT = [{"role": "user", "content": "Tell me a long story about a river town and its people."}]


async def one_request(client, url, key, sampling):
    """(completion tokens, seconds to the first token) of one streamed request."""
    body = {"model": "bench", "messages": PROMPT, **sampling, "stream": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if first is None and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - start
            if '"usage": {' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens, first or 0.0


async def phase(url, key, clients, requests_per_client, sampling):
    async def client_loop(client):
        return [await one_request(client, url, key, sampling) for _ in range(requests_per_client)]

    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, key, {**sampling, "max_tokens": 8})  # warm-up: first calls cost more
        start = time.perf_counter()
        results = await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    done = [r for per_client in results for r in per_client]
    tokens = sum(t for t, _ in done)
    return {"clients": clients, "requests": len(done), "tokens": tokens, "seconds": seconds,
            "aggregate": tokens / seconds, "per_client": tokens / seconds / clients,
            "ttft": sum(f for _, f in done) / len(done)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, workdir):
    """A server on a random model of the demo size, saved as a checkpoint in `workdir`."""
    import torch

    from model import MiniMindConfig, MiniMindForCausalLM
    from model.checkpoint import save_weights

    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers, vocab_size=6400)
    path = os.path.join(workdir, "bench.pth")
    save_weights(MiniMindForCausalLM(config), path, {"stage": "bench"})
    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "scripts", "serve_openai_api.py"), "--load_from", path,
               "--port", str(port), "--max_batch_size", str(max(args.clients)), "--device", args.device,
               "--dtype", args.dtype, "--api_key", "bench"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"server failed to start:\n{server.stderr.read().decode()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, f"{url}/v1"
        except httpx.TransportError:
            time.sleep(0.5)
    server.terminate()
    sys.exit("server did not answer /health within 120 s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_url", default=None, help="bench a running server instead of starting one")
    parser.add_argument("--api_key", default="bench")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests_per_client", type=int, default=2)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=1.0, help="< 1 adds a sort of the vocabulary per step")
    parser.add_argument("--hidden_size", type=int, default=256, help="size of the random model it serves")
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    server, url = None, args.base_url
    with tempfile.TemporaryDirectory() as workdir:
        try:
            if url is None:
                server, url = start_server(args, workdir)
            sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
            rows = [asyncio.run(phase(url, args.api_key, c, args.requests_per_client, sampling))
                    for c in args.clients]
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'seconds':>8} {'aggregate tok/s':>16} "
          f"{'per client':>11} {'TTFT s':>7}")
    for r in rows:
        print(f"{r['clients']:7d} {r['requests']:8d} {r['tokens']:7d} {r['seconds']:8.2f} {r['aggregate']:16.1f} "
              f"{r['per_client']:11.1f} {r['ttft']:7.3f}")
    if len(rows) > 1:
        speedup = rows[-1]["aggregate"] / rows[0]["aggregate"]
        floor = 4.0 if (rows[0]["clients"], rows[-1]["clients"]) == (1, 16) else None
        verdict = "" if floor is None else f" ({'meets' if speedup >= floor else 'BELOW'} the {floor:.0f}x floor)"
        print(f"{rows[-1]['clients']} clients vs {rows[0]['clients']}: {speedup:.2f}x aggregate{verdict}")


if __name__ == "__main__":
    main()
