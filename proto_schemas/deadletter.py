"""Dead letters: a message a service could not accept, with the reason."""

from __future__ import annotations

from pydantic import Field, ValidationError

from proto_schemas.base import Message


class DeadLetter(Message):
    schema_name = "gridfleet.dead_letter"

    service: str
    topic: str = Field(description="Topic the message arrived on (without the run prefix)")
    reason: str = Field(description="Why the message was not accepted")
    errors: list[dict[str, str]] = Field(default_factory=list, description="Field-level errors")
    payload: str = Field(description="The message as received (UTF-8, at most 64 KiB)")
    truncated: bool = False
    received_at: float = Field(description="Epoch seconds")


def error_list(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as `[{"field": "readings.3.ts", "message": "..."}]`."""
    return [
        {"field": ".".join(str(part) for part in err["loc"]) or "(body)", "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
