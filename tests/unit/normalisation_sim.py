"""The normalisation consumer's algorithm for one energy point, without a database or a broker.

Mirrors services/normalisation/consumer.py step by step, with the database replaced by lists: readings stored
once per timestamp (the first wins, like `ON CONFLICT DO NOTHING`), the latest reading, the window of stored
readings late ones fall in (`energy.select_window`, the `_WINDOW` query), and the held intervals (with the
`_SUPERSEDE` and `_HOLD` statements' effect). Every computation is the consumer's own pure function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from proto_schemas.quality import Quality
from services.normalisation.consumer import MAX_GOOD_GAP_MS
from services.normalisation.energy import (
    EnergyInterval,
    Reading,
    Register,
    late_bounds,
    point_changes,
    select_window,
    settle,
)


@dataclass
class HeldRow:
    energy: float
    status: str = "held"


@dataclass
class SimulatedPoint:
    register: Register | None = None
    max_per_hour: float | None = None
    max_gap_ms: int = MAX_GOOD_GAP_MS
    stored: list[Reading] = field(default_factory=list)
    latest: Reading | None = None
    sent: list[EnergyInterval] = field(default_factory=list)
    held: dict[tuple[int, int], HeldRow] = field(default_factory=dict)

    def deliver(self, batch: Iterable[tuple[int, float] | Reading]) -> list[EnergyInterval]:
        """One raw batch of this point: what the consumer sends downstream for it."""
        known = {ts for ts, _, _ in self.stored}
        fresh: list[Reading] = []
        for reading in batch:
            ts, value = reading[0], reading[1]
            quality = int(reading[2]) if len(reading) == 3 else int(Quality.GOOD)
            if ts in known:
                continue
            known.add(ts)
            fresh.append((ts, value, quality))
        if not fresh:
            return []
        fresh.sort()
        self.stored = sorted(self.stored + fresh)
        previous = self.latest
        bounds = late_bounds(previous, fresh)
        window = select_window(self.stored, *bounds) if bounds is not None else []
        if previous is None or fresh[-1][0] > previous[0]:
            self.latest = fresh[-1]
        changes = point_changes(previous, fresh, window, max_gap_ms=self.max_gap_ms, register=self.register)
        hits: dict[tuple[int, int], tuple[float, str]] = {}
        for iv in changes.removed:
            row = self.held.get(iv.key)
            if row is not None and row.status in ("held", "confirmed"):
                hits[iv.key] = (row.energy, row.status)
                row.status = "superseded"
        outcome = settle(changes, hits, self.max_per_hour)
        for iv, _reason in outcome.hold:
            self.held.setdefault(iv.key, HeldRow(iv.energy))
        self.sent.extend(outcome.send)
        return outcome.send

    def confirm(self, key: tuple[int, int]) -> EnergyInterval | None:
        """`POST /internal/held/{id}/confirm`: the held energy goes on, quality MANUAL."""
        row = self.held[key]
        if row.status != "held":
            return None
        row.status = "confirmed"
        interval = EnergyInterval(key[0], key[1], row.energy, Quality.MANUAL)
        self.sent.append(interval)
        return interval

    def confirm_all(self) -> None:
        for key in list(self.held):
            self.confirm(key)

    def pending(self) -> float:
        """Energy held and neither confirmed nor superseded yet."""
        return sum(row.energy for row in self.held.values() if row.status == "held")

    def net(self) -> dict[tuple[int, int], float]:
        """Energy sent per interval, withdrawals included; intervals that net to nothing left out."""
        totals: dict[tuple[int, int], float] = {}
        for iv in self.sent:
            totals[iv.key] = totals.get(iv.key, 0.0) + iv.energy
        return {key: value for key, value in totals.items() if value != 0.0}
