"""Internal pipeline messages: ingestion -> normalisation -> aggregation.

Columnar (parallel lists) on purpose: thousands of readings travel per message and go into the database as
arrays, so a list per column validates and encodes far faster than a list of objects.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from proto_schemas.base import Message


class _Columns(Message):
    def _check_lengths(self, *columns: list[int] | list[float]) -> None:
        lengths = {len(column) for column in columns}
        if len(lengths) > 1:
            raise ValueError("all columns must have the same length")


class RawReadingBatch(_Columns):
    """Readings accepted by ingestion: known gateway, known point, new (point_id, ts)."""

    schema_name = "gridfleet.raw_reading_batch"

    batch_id: str = Field(description="Deterministic id of the ingested message(s)")
    correlation_id: str
    gateway_uuid: str | None = None
    point_ids: list[int]
    ts_ms: list[int] = Field(description="Epoch milliseconds, UTC")
    values: list[float] = Field(description="Raw values as received")

    @model_validator(mode="after")
    def _same_length(self) -> Self:
        self._check_lengths(self.point_ids, self.ts_ms, self.values)
        return self


class EnergyIntervalBatch(_Columns):
    """Interval energy of ENERGY_VALUE points: energy in (start, end], in the point's unit after its ratio.

    A late reading that falls inside an interval already sent splits it: the batch then carries the old
    interval with negative energy and the two new ones, so sums downstream stay right.
    """

    schema_name = "gridfleet.energy_interval_batch"

    batch_id: str = Field(description="Deterministic: a redelivered batch has the same id")
    correlation_id: str
    point_ids: list[int]
    start_ms: list[int]
    end_ms: list[int]
    energy: list[float]
    quality: list[int] = Field(description="proto_schemas.quality.Quality codes")

    @model_validator(mode="after")
    def _same_length(self) -> Self:
        self._check_lengths(self.point_ids, self.start_ms, self.end_ms, self.energy, self.quality)
        return self
