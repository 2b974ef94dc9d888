"""Generated requests over every operation of the gateway's OpenAPI document (schemathesis).

The document is fetched from the running gateway, so the test follows the API as it is served. For every
operation schemathesis draws schema-conforming (positive) and schema-violating (negative) requests; each is
sent with a valid session, and every answer must be

* no 5xx (and an answer at all),
* a 4xx only as `application/problem+json` with `title`, `status` (the HTTP status) and `detail`, and
  `errors` (if any) a list of `{field, message}`,
* no redirect off the public API (to a service behind the gateway),
* for a positive request, no 400 in which the body model refuses a field (`data.<field>`, in pydantic's
  words): the document says the value is valid, so the API enforces a constraint the document lacks.
  Refusals the document cannot express (unknown or duplicate references, objects in use, rules across
  fields, in the handlers' own words) are not counted.

Random ids mostly miss, so every other positive request is aimed at objects that exist: path and body ids
taken from the collections' listings, valid choices for the few strings the API takes from a fixed set, and
report periods that matter (ordinary days, both DST changes, explicit offsets, the ends of the calendar).
Rows that existed before the test (seeded data such as the "Electricity" category, the administrator, other
tests' objects) are never written or deleted: a PUT or DELETE that would reach one goes to an object this
test created instead. The test logs in a session of its own, so the generated `PUT /users/logout` ends
nothing but that session.

Generation is derandomized (the same requests on every run). The gateway limits each user's rate, so the
requests are paced below that limit (never draining the bucket the other tests share) and their number is
what the limit allows in `SENDING_S` seconds, split over the operations that take input (`MIN_PER_MODE` to
`MAX_PER_MODE` per operation and generation mode). A 429 is waited out and the request sent again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import TypeAdapter, ValidationError
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.support import Platform, build_site

pytestmark = pytest.mark.asyncio(loop_scope="session")

API = "/api/v1"
SENDING_S = 32  # the requests are sized to take about this long at the gateway's rate limit
MIN_PER_MODE, MAX_PER_MODE = 2, 20  # cases per operation and generation mode
CONCURRENCY = 6
REFRESH = 30  # operations after which a listing used for aiming is fetched again
NOWHERE = 2_147_483_000  # an id that names nothing (and fits every id column)
SHOWN = 60  # wrong answers described in full in the failure message

# Fields naming another object whose collection is not simply the field's name in the plural.
ALIASES = {"parent_space_id": "spaces", "master_meter_id": "meters", "meterid": "meters"}
# Report subjects (`spaceid`, `equipmentid`, ...) name their collection too.
ALIASES |= {f"{kind}id": f"{kind}s" for kind in ("space", "equipment", "combinedequipment", "tenant", "store",
                                                   "shopfloor", "virtualmeter", "offlinemeter")}  # fmt: skip
# Strings the document leaves free but the API takes from a fixed set (aimed requests use these).
CHOICES = {
    "protocol": ("mqtt", "modbus-tcp", "bacnet-ip", "opc-ua"),
    "object_type": ("ENERGY_VALUE", "ANALOG_VALUE", "DIGITAL_VALUE", "BINARY_VALUE"),
    "periodtype": ("hourly", "daily", "weekly", "monthly", "yearly"),
}
# Report periods: ordinary ones, the ends of the calendar, both DST changes (Europe/Amsterdam), offsets.
PERIODS = (
    ("2026-01-01T00:00:00", "2026-01-03T00:00:00"),
    ("0001-01-01T00:00:00", "0001-01-02T00:00:00"),
    ("2026-03-29T02:30:00", "2026-03-29T03:00:00"),
    ("9999-12-30T00:00:00", "9999-12-31T23:00:00"),
    ("2026-01-01T00:00:00+14:00", "2026-01-02T00:00:00-12:00"),
    ("2026-10-25T02:30:00", "2026-10-25T03:00:00"),
    ("2025-12-01T00:00:00", "2026-02-01T00:00:00"),
)
# How pydantic words a field's own validation (types, bounds, field validators). A handler's checks of
# references or across fields name a field too, but in their own words.
MODEL_MESSAGES = re.compile(
    r"^(Input should|String should|List should|Dictionary should|Tuple should|Set should|Decimal input|"
    r"Value error|Assertion failed|Field required|Extra inputs|Invalid JSON|URL input)"
)
_AS_ID: TypeAdapter[int] = TypeAdapter(int)


class Pacer:
    """A token bucket on our side, so that the gateway's bucket for this user never runs dry."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self.tokens, self.stamp = 1.0, time.monotonic()
            self.tokens -= 1


@dataclass
class Finding:
    label: str
    mode: str
    problem: str
    status: int | None
    method: str
    url: str
    body: str
    answer: str
    count: int = 1

    def describe(self) -> str:
        return (
            f"{self.label} [{self.mode}] {self.problem} (x{self.count})\n"
            f"    {self.method} {self.url}\n    body: {self.body}\n    answer: {self.status} {self.answer}"
        )


@dataclass
class Run:
    client: httpx.AsyncClient
    pacer: Pacer
    root: str
    collections: set[str]
    headers: dict[str, str] = field(default_factory=dict)
    before: dict[str, set[int]] = field(default_factory=dict)  # ids that existed before the test
    users_before: set[str] = field(default_factory=set)  # names of the users that existed before it
    ids: dict[str, list[int]] = field(default_factory=dict)  # recent listings
    listed: dict[str, int] = field(default_factory=dict)  # the operation number each was listed at
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    unsendable: int = 0
    throttled: int = 0

    async def send(self, request: dict[str, Any]) -> httpx.Response:
        """Send at our pace. A 429 is waited out, and a kept-alive connection the server dropped (it does
        after a 500) is replaced: either way the request had not been served, so it goes again."""
        for _ in range(10):
            await self.pacer.take()
            try:
                answer = await self.client.request(**request)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                answer = await self.client.request(**request)
            if answer.status_code != 429:
                return answer
            self.throttled += 1
            retry = answer.headers.get("retry-after", "1")
            await asyncio.sleep(float(retry) if retry.isdigit() else 1.0)
        return answer

    async def login(self, platform: Platform) -> None:
        """A session for this test alone: the generated logout ends it, not the one the other tests share."""
        data = {"name": "administrator", "password": platform.settings.admin_password}
        answer = await self.send({"method": "PUT", "url": f"{API}/users/login", "json": {"data": data}})
        answer.raise_for_status()
        self.headers = {"User-UUID": answer.json()["uuid"], "Token": answer.json()["token"]}

    def record(self, finding: Finding) -> None:
        key = (finding.label, finding.problem, finding.status)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = finding

    async def rows(self, collection: str, everything: bool = False) -> list[dict[str, Any]]:
        """A collection's rows: its first page, or with `everything` all pages (by `X-Total-Count`)."""
        found: list[dict[str, Any]] = []
        while True:
            params = {"offset": len(found)} if found else {}
            url = f"{API}/{collection}"
            answer = await self.send({"method": "GET", "url": url, "headers": self.headers, "params": params})
            if answer.status_code != 200:
                return found
            page: Any = answer.json()
            if isinstance(page, dict):  # rows wrapped in an object: they are its list
                page = next((v for v in page.values() if isinstance(v, list)), [])
            page = [row for row in page if isinstance(row, dict)]
            found += page
            total = answer.headers.get("x-total-count", "")
            if not (everything and page and total.isdigit() and int(total) > len(found)):
                return found

    async def refresh(self, collection: str, number: int) -> None:
        """List a collection the cases are aimed at again, unless that was done a few operations ago."""
        if number - self.listed.get(collection, -REFRESH) >= REFRESH:
            rows = await self.rows(collection)
            self.ids[collection] = sorted(r["id"] for r in rows if isinstance(r.get("id"), int))
            self.listed[collection] = number

    def owned(self, collection: str) -> list[int]:
        """Ids in a collection that this test created (so it may overwrite or delete them)."""
        before = self.before.get(collection, set())
        return [i for i in self.ids.get(collection, []) if i not in before]


def draw_cases(operation: Any, mode: GenerationMode, examples: int) -> list[Case]:
    """Up to `examples` cases of one operation, the same on every run (derandomized, no example database)."""
    cases: list[Case] = []

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def collect(case: Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        pass  # negative data for an operation without parameters or body: there is nothing to violate
    return cases


def as_id(value: Any) -> int | None:
    """The id the API reads from a path value (FastAPI parses it with pydantic's lax int)."""
    if isinstance(value, bool):
        return None
    try:
        return _AS_ID.validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return None


def collection_of(path: str, parameter: str) -> str | None:
    """The collection a path parameter points into: the path segment just before it."""
    parts = path.split("/")
    at = parts.index(f"{{{parameter}}}")
    return parts[at - 1] if at > 0 else None


def referenced(name: str, collections: set[str]) -> str | None:
    """The collection that a field or query parameter named like `tenant_type_id` refers to, if any."""
    if name in ALIASES:
        return ALIASES[name] if ALIASES[name] in collections else None
    if not name.endswith("_id"):
        return None
    base = name[:-3].replace("_", "")
    return next((c for c in (f"{base}s", f"{base[:-1]}ies", f"{base}es") if c in collections), None)


def aim(case: Case, run: Run, pick: int) -> None:
    """Point a positive case at things that exist: ids from the listings, fixed choices, periods."""

    def choose(collection: str, owned_only: bool = False) -> int | None:
        values = run.owned(collection) if owned_only else run.ids.get(collection, [])
        return values[pick % len(values)] if values else None

    writes = case.method.upper() in ("PUT", "PATCH", "DELETE")
    for name in case.path_parameters:
        collection = collection_of(case.path, name)
        if collection in run.collections and (value := choose(collection, owned_only=writes)) is not None:
            case.path_parameters[name] = value
    declared = [parameter.name for parameter in case.operation.query]
    for name in declared:
        collection = referenced(name, run.collections)
        if collection and (value := choose(collection)) is not None:
            case.query[name] = value
        elif name in CHOICES:
            case.query[name] = CHOICES[name][pick % len(CHOICES[name])]
        elif name.endswith("datetime"):
            base = name.startswith("base")
            start, end = PERIODS[(pick + 3 * base) % len(PERIODS)]
            if base and pick % 3:
                case.query.pop(name, None)  # a base period only now and then
            else:
                case.query[name] = start if "start" in name else end
    data = case.body.get("data") if isinstance(case.body, dict) else None
    if isinstance(data, dict):
        for name in list(data):
            collection = referenced(name, run.collections)
            if collection and data[name] is not None and (value := choose(collection)) is not None:
                data[name] = value
            elif name in CHOICES:
                data[name] = CHOICES[name][pick % len(CHOICES[name])]


def protect(case: Case, run: Run) -> None:
    """Never write or delete a row that existed before the test: send such a write to one of ours.

    That spares the seeded "Electricity" category, and the administrator, whose password a generated
    `PUT /users/resetpassword` naming it would change (ending every session, the other tests' too).
    """
    data = case.body.get("data") if isinstance(case.body, dict) else None
    if case.path.startswith(f"{API}/users") and isinstance(data, dict):
        name = data.get("name")
        if isinstance(name, str) and name.strip() in run.users_before:
            data["name"] = "fuzz-nobody"
    if case.method.upper() not in ("PUT", "PATCH", "DELETE"):
        return
    for parameter, value in case.path_parameters.items():
        collection = collection_of(case.path, parameter)
        if collection is not None and as_id(value) in run.before.get(collection, set()):
            ours = run.owned(collection)
            case.path_parameters[parameter] = ours[0] if ours else NOWHERE


def _param(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_param(v) if isinstance(v, (str, int, float, bool)) else json.dumps(v) for v in value]
    return json.dumps(value)


def as_request(case: Case, run: Run) -> dict[str, Any]:
    """The httpx arguments for a case, with this test's session in place of any generated credentials."""
    kwargs = case.as_transport_kwargs(base_url=run.root)
    skip = {"connection", "accept-encoding", "authorization", "token", "user-uuid"}
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() not in skip}
    headers.update(run.headers)
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": headers,
        "params": {k: _param(v) for k, v in (kwargs.get("params") or {}).items()},
    }
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif isinstance(kwargs.get("data"), (bytes, str)):
        request["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        request["data"] = kwargs["data"]
    return request


def judge(response: httpx.Response, positive: bool, root: str) -> str | None:
    """What is wrong with an answer, if anything."""
    status = response.status_code
    if status >= 500:
        return "server error"
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        if not location.startswith((f"{API}/", f"{root}{API}/")):
            return f"redirect off the public API to {location!r}"
        return None
    if status < 400:
        return None
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return f"4xx with content-type {response.headers.get('content-type')!r}, not application/problem+json"
    try:
        body = response.json()
    except ValueError:
        return "problem+json body is not JSON"
    if not isinstance(body, dict) or not (body.get("title") and body.get("detail")):
        return "problem body lacks title or detail"
    if body.get("status") != status:
        return f"problem body status {body.get('status')!r} differs from the HTTP status"
    errors = body.get("errors", [])
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("field"), str) and isinstance(e.get("message"), str)
        for e in errors
    ):
        return "problem errors are not a list of {field, message}"
    refused = sorted(
        {e["field"] for e in errors if e["field"].startswith("data.") and MODEL_MESSAGES.match(e["message"])}
    )
    if positive and status == 400 and refused:
        return f"schema-conforming body refused on {', '.join(refused)} (a constraint the document lacks)"
    return None


def shown(request: dict[str, Any]) -> str:
    if "json" in request:
        return json.dumps(request["json"], ensure_ascii=True)[:600]
    if "content" in request:
        return repr(request["content"])[:600]
    return repr(request.get("data"))[:600]


async def exercise(run: Run, label: str, mode: GenerationMode, case: Case, n: int) -> None:
    """Send one case (every other positive one aimed at existing objects) and judge the answer."""
    positive = mode is GenerationMode.POSITIVE
    if positive and n % 2:
        aim(case, run, n // 2)
    protect(case, run)
    try:
        request = as_request(case, run)
    except Exception:  # schemathesis cannot serialize it: nothing to send
        run.unsendable += 1
        return
    try:
        response = await run.send(request)
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
        run.unsendable += 1  # the client cannot put it on the wire: nothing reached the server
        return
    except httpx.TransportError as exc:
        url = str(request["url"])
        run.record(
            Finding(
                label, mode.value, f"no answer: {exc!r}", None, request["method"], url, shown(request), ""
            )
        )
        return
    run.sent[label] += 1
    verdict = judge(response, positive, run.root)
    if verdict:
        url, answer = str(response.request.url), response.text[:300]
        run.record(
            Finding(
                label,
                mode.value,
                verdict,
                response.status_code,
                request["method"],
                url,
                shown(request),
                answer,
            )
        )


def report(run: Run, summary: str) -> str:
    """How many operations gave each kind of wrong answer, then an example of each (operation, kind)."""
    ordered = sorted(run.findings.values(), key=lambda f: (f.mode != "positive", f.problem, f.label))
    kinds = Counter(f"{f.status} {f.problem}" for f in ordered)
    lines = [f"{len(ordered)} (operation, wrong answer) pairs; {summary}"]
    lines += [f"  {n:4} operations: {kind}" for kind, n in kinds.most_common()]
    lines += [f.describe() for f in ordered[:SHOWN]]
    if len(ordered) > SHOWN:
        lines.append(f"... and {len(ordered) - SHOWN} more: " + ", ".join(f.label for f in ordered[SHOWN:]))
    return "\n".join(lines)


async def test_generated_requests_get_no_5xx_and_every_4xx_is_a_problem(platform: Platform) -> None:
    started = time.monotonic()
    root = platform.processes.url("gateway")
    document = (await platform.api.get(f"{root}/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(with_security_parameters=False)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), [r.err() for r in results if not isinstance(r, Ok)]
    jobs = [(op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    # Our pace: 90% of the gateway's rate, half its burst. The requests that fit in SENDING_S seconds are
    # shared among the operations that take input (one without any gets its single request): `share` each,
    # the fractions spread evenly over the jobs (so 2.75 gives three jobs 3 cases for each one given 2).
    limits = platform.settings
    rate = 0.9 * getattr(limits, "rate_limit_per_s", 50.0)
    burst = 0.5 * getattr(limits, "rate_limit_burst", 200)
    with_input = [bool(op.body) or any(True for _ in op.iter_parameters()) for op, _ in jobs]
    share = (burst + rate * SENDING_S) / max(1, sum(with_input))
    examples = [
        max(MIN_PER_MODE, min(MAX_PER_MODE, int((k + 1) * share) - int(k * share)))
        for k in itertools.accumulate(with_input, initial=0)
    ][: len(jobs)]
    collections = {
        path.removeprefix(f"{API}/")
        for path, item in document["paths"].items()
        if "get" in item and re.fullmatch(rf"{API}/\w+", path)
    }

    async with httpx.AsyncClient(base_url=root, timeout=30) as client:
        run = Run(client, Pacer(rate, burst), root, collections)
        await run.login(platform)
        for collection in sorted(collections):
            rows = await run.rows(collection, everything=True)
            run.before[collection] = {r["id"] for r in rows if isinstance(r.get("id"), int)}
            if collection == "users":
                run.users_before = {r["name"] for r in rows if isinstance(r.get("name"), str)}
        # Something of each kind to aim at: two sites (gateway, source, points, meters, space) and a category.
        for n in range(2):
            await build_site(
                platform.api, f"fuzz-{started:.0f}-{n}", energy_points=("a", "b"), analog_points=("t",)
            )
        await platform.api.post(
            "/energycategories", json={"data": {"name": f"fuzz-{started:.0f}", "unit_of_measure": "kWh"}}
        )

        # A thread draws the cases, operation after operation, while the loop sends those already drawn.
        loop = asyncio.get_running_loop()
        drawn: asyncio.Queue[tuple[Any, GenerationMode, list[Case] | Exception]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            for (operation, mode), wanted in zip(jobs, examples, strict=True):
                if stop.is_set():
                    return
                try:
                    cases: list[Case] | Exception = draw_cases(operation, mode, wanted)
                except Exception as exc:  # handed over, so that the test fails instead of waiting
                    cases = exc
                loop.call_soon_threadsafe(drawn.put_nowait, (operation, mode, cases))

        producer = asyncio.ensure_future(asyncio.to_thread(produce))
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(label: str, mode: GenerationMode, case: Case, n: int) -> None:
            async with gate:
                await exercise(run, label, mode, case, n)

        sending: set[asyncio.Task[None]] = set()  # cases of several operations go at once
        try:
            for number in range(len(jobs)):
                operation, mode, cases = await drawn.get()
                if isinstance(cases, Exception):
                    raise AssertionError(f"no cases for {operation.label} [{mode.value}]") from cases
                for parameter in operation.path_parameters:
                    collection = collection_of(operation.path, parameter.name)
                    if collection is not None and collection in collections:
                        await run.refresh(collection, number)
                if operation.path.endswith("/users/logout"):  # alone and in turn: each may end the session
                    await asyncio.gather(*sending)
                    for n, case in enumerate(cases):
                        await exercise(run, operation.label, mode, case, n)
                    await run.login(platform)
                    continue
                for n, case in enumerate(cases):
                    sending.add(asyncio.ensure_future(one(operation.label, mode, case, n)))
                done = {task for task in sending if task.done()}
                await asyncio.gather(*done)  # raises what went wrong in the test itself
                sending -= done
            await asyncio.gather(*sending)
            alive = await run.send({"method": "GET", "url": f"{API}/timezones", "headers": run.headers})
            assert alive.status_code == 200, f"the test's session ended before its end: {alive.text}"
        finally:
            stop.set()
            for task in sending:
                task.cancel()
            await producer

    summary = (
        f"{sum(run.sent.values())} requests over {len(run.sent)} of {len(operations)} operations "
        f"({share:.2f} per operation and mode, {run.unsendable} not sendable, {run.throttled} throttled) "
        f"in {time.monotonic() - started:.1f} s"
    )
    print(f"\n{summary}")
    assert not [op.label for op in operations if not run.sent[op.label]], (
        f"operations never exercised; {summary}"
    )
    assert "Electricity" in [c["name"] for c in (await platform.api.get("/energycategories")).json()]
    assert not run.findings, report(run, summary)
