"""Latency of the REST API's read path (token check + tenant-scoped query + JSON) against a running Hearth.

    python bench/api_latency.py --url http://localhost:8000 --token hth_... [--requests 500] [--concurrency 4]

Prints one JSON line, then a human summary.
"""
import argparse
import json
import statistics
import threading
import time

import httpx

ENDPOINTS = ["/api/v1/tenant", "/api/v1/members", "/api/v1/plans"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--requests", type=int, default=500, help="per endpoint")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"}
    results = {}
    for endpoint in ENDPOINTS:
        timings, errors, lock = [], [], threading.Lock()
        per_worker = args.requests // args.concurrency

        def worker(endpoint=endpoint, timings=timings, errors=errors, lock=lock, per_worker=per_worker):
            with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
                client.get(endpoint)  # warm the connection
                for _ in range(per_worker):
                    started = time.perf_counter()
                    response = client.get(endpoint)
                    elapsed = time.perf_counter() - started
                    with lock:
                        (timings if response.status_code == 200 else errors).append(elapsed)

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
        timings.sort()
        results[endpoint] = {
            "n": len(timings), "errors": len(errors), "rps": round(len(timings) / wall, 1),
            "p50_ms": round(statistics.median(timings) * 1000, 2),
            "p99_ms": round(timings[int(len(timings) * 0.99) - 1] * 1000, 2),
        }
    print(json.dumps({"bench": "api_latency", "url": args.url, "concurrency": args.concurrency, "results": results}))
    for endpoint, r in results.items():
        print(f"{endpoint:18} {r['rps']:8.1f} req/s   p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms"
              f"   errors {r['errors']}")


if __name__ == "__main__":
    main()
