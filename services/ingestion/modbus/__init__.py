"""Modbus TCP acquisition: decode registers, plan batched reads, poll data sources into telemetry."""
