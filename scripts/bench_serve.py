"""Load a running ``nmt serve`` with concurrent clients, one sentence per request.

    nmt serve runs/fr-en --threads 1 &
    python scripts/bench_serve.py http://127.0.0.1:8000 test.fr --clients 16 --lines 320
    python scripts/bench_serve.py http://127.0.0.1:8000 test.fr --lines 320 --direct runs/fr-en

Prints sentences/s, p50/p99 latency and the sentences per model call the server batched.
``--direct RUN_DIR`` also times ``Translator.translate`` in this process on the same sentences
(one call for all, then one call per sentence), torch on one thread, for comparison.
"""
import argparse
import asyncio
import statistics
import time

import httpx


async def _load(base: str, sentences: list[str], clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(c: httpx.AsyncClient, k: int) -> None:
        for text in sentences[k::clients]:
            start = time.perf_counter()
            r = await c.post("/api/translate", json={"text": text})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=clients),
                                 timeout=120) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(clients)))
        return time.perf_counter() - start, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("source", help="one sentence per line")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--lines", type=int, default=320)
    ap.add_argument("--direct", metavar="RUN_DIR")
    args = ap.parse_args()
    with open(args.source, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for _, line in zip(range(args.lines), f)]
    before = httpx.get(args.url + "/health").json()
    seconds, latencies = asyncio.run(_load(args.url, sentences, args.clients))
    after = httpx.get(args.url + "/health").json()
    q = statistics.quantiles(latencies, n=100)
    calls = after["model_calls"] - before["model_calls"]
    print(f"nmt serve, {args.clients} clients: {len(latencies) / seconds:.1f} sentences/s, "
          f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"{(after['texts'] - before['texts']) / max(1, calls):.1f} sentences per model call")
    if args.direct:
        import torch

        from nmt.inference.translator import Translator

        torch.set_num_threads(1)
        t = Translator.load(args.direct, device="cpu")
        t.translate(sentences[:8])
        start = time.perf_counter()
        t.translate(sentences)
        print(f"Translator.translate, one call: {len(sentences) / (time.perf_counter() - start):.1f} sentences/s")
        start = time.perf_counter()
        for text in sentences:
            t.translate([text])
        print(f"Translator.translate, one sentence per call: "
              f"{len(sentences) / (time.perf_counter() - start):.1f} sentences/s")


if __name__ == "__main__":
    main()
