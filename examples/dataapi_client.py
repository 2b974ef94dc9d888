"""Example gridfleet Data API client: list the installations a key may read and print a day's totals.

    GRIDFLEET_DATA_API_KEY=gfd_... python examples/dataapi_client.py [--date 2026-03-29] [--url http://host:8000]

The key comes from the environment (never from the command line, where other users could see it). Any
httpx-capable Python works; only the standard library and httpx are used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from typing import Any

import httpx


def get(api: httpx.Client, path: str, **params: str) -> Any:
    """GET a Data API path, waiting out the key's rate limit (429 with Retry-After) when it is reached."""
    for _ in range(5):
        answer = api.get(path, params=params)
        if answer.status_code != 429:
            break
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    if answer.status_code >= 400:
        problem = answer.json()
        raise SystemExit(f"{path}: {answer.status_code} {problem.get('title')}: {problem.get('detail')}")
    return answer.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("GRIDFLEET_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--date", default=date.today().isoformat(), help="the local day, YYYY-MM-DD")
    args = parser.parse_args()
    key = os.environ.get("GRIDFLEET_DATA_API_KEY")
    if not key:
        print("set GRIDFLEET_DATA_API_KEY to your Data API key", file=sys.stderr)
        return 2
    with httpx.Client(base_url=f"{args.url}/api/v1", headers={"API-Key": key}, timeout=30) as api:
        instances = get(api, "/data/instances")
        print(
            f"{'id':>6}  {'installation':30}  {'zone':18}  {'category':12}  {'total':>12}  {'slots':>5}  quality"
        )
        for instance in instances:
            totals = get(api, f"/data/instances/{instance['id']}/totals", period="day", date=args.date)
            rows = totals["categories"] or [{"category": "-", "unit": "", "total": 0.0, "quality": "missing"}]
            for row in rows:
                total = f"{row['total']:.3f} {row['unit']}"
                print(
                    f"{instance['id']:>6}  {instance['title'][:30]:30}  {totals['timezone'][:18]:18}  "
                    f"{row['category'][:12]:12}  {total:>12}  {len(totals['timestamps']):>5}  {row['quality']}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
