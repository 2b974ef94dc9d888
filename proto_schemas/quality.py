"""Quality of a reading or of an energy bucket.

Every number gridfleet stores carries one of these. On the bus they travel as small integers; in the REST
API as their lower-case names. The integer order is severity: a bucket's quality is the worst (highest)
quality of what went into it.
"""

from __future__ import annotations

from enum import IntEnum


class Quality(IntEnum):
    GOOD = 0
    MANUAL = 1  # uploaded or repaired by a person
    ESTIMATED = 2  # spread over a gap in the readings
    RESET = 3  # the register went back (meter replaced or reset); energy counted from zero
    ROLLOVER = 4  # the register wrapped around its maximum
    SUSPECT = 5  # outside the point's limits
    MISSING = 6  # a bucket with no data at all (never on a reading)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def worst(cls, *qualities: int) -> Quality:
        """The most severe of the given qualities (GOOD when none)."""
        return cls(max(qualities, default=cls.GOOD))
