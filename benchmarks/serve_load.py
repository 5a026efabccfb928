"""Load test of dbunet-serve on this machine: throughput and latency percentiles per replica layout.

    python benchmarks/serve_load.py [--model tiny] [--requests 40] [--concurrency 4] [--rounds 3] [--max-seconds 300]

Starts Ray locally (loopback only), deploys a preset's artifacts (`--model`: tiny, or shapes, the demo's size with
seeded weights; exported once under benchmarks/.cache/) in each layout in turn and sends `--requests` requests
(distinct seeds, the preset's defaults: tiny 128x128, 8 steps and 4 refiner steps) from `--concurrency` client
threads, stopping early at `--max-seconds`. Layouts on the same cores: one replica with every CPU (ONNX Runtime's
threads) vs one replica per CPU, the latter also with ONNX Runtime's whole loops (`--whole-loops`; each replica's
first image, which builds the loop's session, falls in the warm-up), alternating for `--rounds` rounds (the
machine's drift hits all alike); throughput is the median over rounds, latency percentiles pool every answered
request. Requests are not batched: the step graphs take one latent. Rewrites the `serve_load` block of
benchmarks/README.md (`cpu` for tiny, `cpu-shapes`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(url: str, seed: int) -> tuple[int, float]:
    start = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/images", data=json.dumps({"prompt": "a red circle", "seed": seed}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - start


def run_layout(url: str, requests: int, concurrency: int, max_seconds: float) -> dict:
    with ThreadPoolExecutor(concurrency) as pool:
        # warm-up: every replica's first run, sent together so the router spreads them over the replicas
        list(pool.map(lambda s: one(url, s), range(10_000, 10_000 + 2 * concurrency)))
        start = time.perf_counter()
        deadline = start + max_seconds
        results = list(pool.map(lambda s: one(url, s) if time.perf_counter() < deadline else (0, 0.0), range(requests)))
    elapsed = time.perf_counter() - start
    done = [t for status, t in results if status == 200]
    return {"latencies": done, "sent": sum(s != 0 for s, _ in results), "throughput": len(done) / elapsed}


def summary(rounds: list[dict]) -> dict:
    latencies = sorted(t for r in rounds for t in r["latencies"])
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"ok": len(latencies), "sent": sum(r["sent"] for r in rounds),
            "throughput": statistics.median(r["throughput"] for r in rounds), "p50": q[49], "p99": q[98]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "shapes"), default="tiny")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()

    import ray
    from ray import serve

    sys.path.insert(0, str(HERE))
    from attention import export_model
    from cpu_report import cpu_line, write_block

    from dbunet.config import preset
    from dbunet.serve.app import ServeOptions, run_app

    cache = export_model(args.model)
    d = preset(args.model).defaults
    cores = os.cpu_count() or 1
    port = free_port()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    url = f"http://127.0.0.1:{port}"
    layouts = [(f"1 replica x {cores} CPUs", ServeOptions(cache, "ort", "fp32", 1, num_cpus=cores, max_queued=64)),
               (f"{cores} replicas x 1 CPU", ServeOptions(cache, "ort", "fp32", cores, num_cpus=1, max_queued=64)),
               (f"{cores} replicas x 1 CPU, whole loops",
                ServeOptions(cache, "ort", "fp32", cores, num_cpus=1, max_queued=64, whole_loops=True))]
    lines = [f"## dbunet-serve under load: {args.model} (Ray Serve, local, loopback)", "",
             f"`python benchmarks/serve_load.py --requests {args.requests} --concurrency {args.concurrency} --rounds "
             f"{args.rounds} --model {args.model}`: the {args.model} preset ({d.height}x{d.width}, {d.steps} steps, "
             f"{d.refiner_steps} refiner steps), ONNX Runtime FP32, "
             f"{args.concurrency} client threads, the layouts alternating. {cpu_line()}.", "",
             "| layout | answered | images/s (median of rounds) | p50 latency | p99 latency |", "|---|---|---|---|---|"]
    results: dict[str, list[dict]] = {label: [] for label, _ in layouts}
    try:
        for _ in range(args.rounds):
            for label, options in layouts:
                run_app(options)  # a replica that cannot load says why
                results[label].append(run_layout(url, args.requests, args.concurrency, args.max_seconds))
                serve.delete("dbunet")  # its replicas' CPUs free before the next layout asks for them
                print(label, f"{results[label][-1]['throughput']:.2f} images/s", flush=True)
        for label, rounds in results.items():
            r = summary(rounds)
            lines.append(f"| {label} | {r['ok']} of {r['sent']} | {r['throughput']:.2f} | {r['p50']:.3f} s | "
                         f"{r['p99']:.3f} s |")
    finally:
        serve.shutdown()
        ray.shutdown()
    readme = HERE / "README.md"
    slug = "cpu" if args.model == "tiny" else f"cpu-{args.model}"
    write_block(readme, slug, "\n".join(lines), tool="serve_load")


if __name__ == "__main__":
    main()
