"""Base of every gridfleet message: a name and a version that travel with the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Message(BaseModel):
    """A message on the bus or on the wire. Subclasses set `schema_name` and `schema_version`.

    A compatible change (a new optional field) keeps the version; a rename or a removal makes a new
    model with the next version, published beside the old one until every consumer has moved.
    """

    model_config = ConfigDict(extra="ignore", frozen=False)
    schema_name: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def schema_id(cls) -> str:
        return f"{cls.schema_name}.v{cls.schema_version}"


def _to_datetime(value: Any) -> Any:
    """Accept ISO 8601 with an offset or epoch milliseconds; reject naive times."""
    if isinstance(value, bool):
        raise ValueError("a time must be ISO 8601 with an offset or epoch milliseconds")
    if isinstance(value, int | float):
        if not 0 <= value < 32503680000000:  # year 3000
            raise ValueError("epoch milliseconds out of range")
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("a time must be ISO 8601 with an offset or epoch milliseconds") from exc
        if parsed.tzinfo is None:
            raise ValueError("a time must carry an offset (e.g. 2026-11-22T10:00:00Z)")
        return parsed
    return value


Timestamp = Annotated[datetime, BeforeValidator(_to_datetime)]
