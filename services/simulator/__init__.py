"""Simulators that stand in for the field: MQTT controllers speaking the device protocol (`controllers`,
`python -m services.simulator`) and a Modbus TCP inverter/meter (`modbus_server`)."""
