"""Home Assistant through MQTT discovery: each camera a device with its sensors, snapshot
and alert event, one hsid device with the system's status, states published as they happen."""
