"""Command service: commands with a lifecycle, live setpoints and schedules (CONTRACTS.md §1, §3).

- services/command/commands.py: `/commands`, `PUT /commands/{id}/send`, `/commandruns`;
  services/command/bindings.py: commands bound to meters and spaces (`/meters/{id}/commands`, `/spaces/…`);
  services/command/runs.py: a run's life (publish, `cmd/ack`, timeouts and expiry).
- services/command/control.py: `/instances/{id}/policies` and `/instances/{id}/schedules`;
  services/command/state.py: what is in force, the retained `control` and `schedule` states, `control/ack` and
  `schedule/ack`, and the loop that ends expired policies and dispatches schedule intervals once.
- services/command/providers.py: external signal providers steering over MQTT (`gf/v1/ext/…`): their links
  (from onboarding's events), requests, acknowledgements and the retained `state`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI

from libs.service import ServiceContext, create_service_app, get_context
from services.command import bindings, commands, control, providers, runs, state

MIGRATIONS = Path(__file__).parent / "migrations"
internal = APIRouter(prefix="/internal", include_in_schema=False)


@internal.get("/stats")
async def stats(ctx: ServiceContext = Depends(get_context)) -> dict[str, object]:
    """Runs by status, dispatched intervals, and dead letters of this process."""
    rows = await ctx.db.fetch("SELECT status, count(*) AS n FROM command_runs GROUP BY status")
    dispatched = await ctx.db.fetchval("SELECT coalesce(sum(dispatch_count), 0) FROM schedule_intervals")
    return {
        "runs": {row["status"]: row["n"] for row in rows},
        "intervals_dispatched": int(dispatched),
        "dead_letters": ctx.mqtt.dead_letters,
    }


async def setup(ctx: ServiceContext) -> None:
    runs.register(ctx)
    state.register(ctx)
    providers.register(ctx)


def create_app() -> FastAPI:
    return create_service_app(
        "command",
        routers=[commands.router, bindings.router, control.router, internal],
        migrations=MIGRATIONS,
        setup=setup,
        title="gridfleet command",
    )
