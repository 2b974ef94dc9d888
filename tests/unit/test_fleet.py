"""Fleet columns: seconds online within a window, from status transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingestion.fleet import is_online, seconds_online

START = datetime(2026, 11, 22, tzinfo=UTC)
END = START + timedelta(days=1)


def test_a_controller_online_all_day_counts_86400() -> None:
    assert seconds_online([], "online", START, END) == 86400


def test_an_outage_is_subtracted() -> None:
    transitions = [
        (START + timedelta(hours=6), "offline"),
        (START + timedelta(hours=7, seconds=30), "online"),
    ]
    assert seconds_online(transitions, "online", START, END) == 86400 - 3630


def test_transitions_before_the_window_set_the_starting_state() -> None:
    transitions = [(START - timedelta(hours=2), "online"), (START + timedelta(hours=1), "offline")]
    assert seconds_online(transitions, None, START, END) == 3600


def test_offline_status_or_silence_means_offline() -> None:
    now = START + timedelta(hours=1)
    assert not is_online("offline", now, now, timedelta(minutes=5))
    assert not is_online("online", now - timedelta(minutes=6), now, timedelta(minutes=5))
    assert is_online(None, now - timedelta(minutes=1), now, timedelta(minutes=5))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 86399), st.sampled_from(["online", "offline"])), max_size=30),
    st.sampled_from(["online", "offline", None]),
)
def test_seconds_online_and_offline_add_up_to_the_window(
    raw: list[tuple[int, str]], before: str | None
) -> None:
    transitions = sorted((START + timedelta(seconds=s), status) for s, status in raw)
    online = seconds_online(transitions, before, START, END)
    flipped = [(at, "offline" if status == "online" else "online") for at, status in transitions]
    flipped_before = {"online": "offline", "offline": "online", None: "online"}[before]
    assert 0 <= online <= 86400
    # Online time under the transitions plus online time under the opposite transitions is the whole day,
    # as long as no two transitions share a second (then the order between them decides).
    if len({at for at, _ in transitions}) == len(transitions):
        assert online + seconds_online(flipped, flipped_before, START, END) == 86400
