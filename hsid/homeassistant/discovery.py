"""Discovery: the topics hsid publishes for Home Assistant and the retained configs that make
Home Assistant create a device per camera (and one for hsid itself) on its own.

The configs follow Home Assistant's MQTT discovery documentation: one config per entity at
`<discovery_prefix>/<component>/<node_id>/<object_id>/config`, full key names (no
abbreviations), a `unique_id` and `device` on each so the entities group under their device,
`origin` naming hsid, and hsid's availability topic so every entity shows unavailable when
hsid is gone (its MQTT last will says "offline").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from hsid.core.config import MqttConfig

ONLINE, OFFLINE = "online", "offline"  # Home Assistant's default availability payloads
ON, OFF = "ON", "OFF"  # the binary sensors' default payloads
EVENT_TYPE = "alert"  # the event entity's one event type

# The binary sensors and the COCO classes each stands for.
OBJECT_GROUPS: dict[str, frozenset[str]] = {
    "person": frozenset({"person"}),
    "vehicle": frozenset({"bicycle", "car", "motorcycle", "bus", "truck", "train", "boat",
                          "airplane"}),
    "animal": frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear",
                         "zebra", "giraffe"}),
}
GROUP_ICONS = {"person": "mdi:account", "vehicle": "mdi:car", "animal": "mdi:paw"}

# The hub's sensors: key (its state topic's last level), name, and what else Home
# Assistant is told about it.
HUB_SENSORS: dict[str, dict[str, Any]] = {
    "queue_depth": {"name": "Queue depth", "icon": "mdi:tray-full",
                    "state_class": "measurement", "unit_of_measurement": "jobs"},
    "detector_provider": {"name": "Detector provider", "icon": "mdi:chip"},
    "inference_rate": {"name": "Inference rate", "icon": "mdi:speedometer",
                       "state_class": "measurement", "unit_of_measurement": "fps",
                       "suggested_display_precision": 1},
    "health": {"name": "Health", "icon": "mdi:heart-pulse"},
}


def group_of(object_type: str | None) -> str | None:
    """The binary sensor a detected class turns on (person, vehicle, animal), or None."""
    return next((group for group, classes in OBJECT_GROUPS.items()
                 if object_type in classes), None)


def object_id(text: str) -> str:
    """`text` as one MQTT topic level and Home Assistant id: letters, digits, _ and -."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def version() -> str:
    try:
        return metadata.version("hsid")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic hsid publishes to or reads for Home Assistant, from [mqtt]."""

    config: MqttConfig

    @property
    def node(self) -> str:
        """The hub's node id, and the stem of every camera's."""
        return object_id(self.config.topic_prefix.replace("/", "_"))

    @property
    def availability(self) -> str:
        """online / offline (retained; the last will says offline)."""
        return f"{self.config.topic_prefix}/status"

    @property
    def inventory(self) -> str:
        """The camera ids whose configs hsid published (retained JSON list), so a camera
        deleted while hsid was down still has its entries removed."""
        return f"{self.config.topic_prefix}/cameras"

    @property
    def birth(self) -> str:
        """Where Home Assistant says it (re)started: discovery is published again."""
        return f"{self.config.discovery_prefix}/status"

    def camera_node(self, camera_id: str) -> str:
        return f"{self.node}_{object_id(camera_id)}"

    def camera(self, camera_id: str, key: str) -> str:
        """A camera's state topic: person, vehicle, animal (ON/OFF), risk (the score),
        risk/attributes (JSON), snapshot (JPEG), alert (event JSON)."""
        return f"{self.config.topic_prefix}/{object_id(camera_id)}/{key}"

    def hub(self, key: str) -> str:
        return f"{self.config.topic_prefix}/system/{key}"

    def discovery(self, component: str, node: str, entity: str) -> str:
        return f"{self.config.discovery_prefix}/{component}/{node}/{entity}/config"


def _common(topics: Topics, node: str, entity: str, device: dict[str, Any]) -> dict[str, Any]:
    return {"unique_id": f"{node}_{entity}", "availability_topic": topics.availability,
            "payload_available": ONLINE, "payload_not_available": OFFLINE,
            "device": device, "origin": {"name": "hsid", "sw_version": version()}}


def hub_device(topics: Topics) -> dict[str, Any]:
    return {"identifiers": [topics.node], "name": "hsid", "manufacturer": "hsid",
            "model": "Home security intelligence daemon", "sw_version": version()}


def camera_configs(topics: Topics, camera_id: str, name: str,
                   public_url: str = "") -> dict[str, dict[str, Any]]:
    """The discovery topic -> config of each of a camera's entities."""
    node = topics.camera_node(camera_id)
    device: dict[str, Any] = {"identifiers": [node], "name": name or camera_id,
                              "manufacturer": "hsid", "model": "Camera",
                              "via_device": topics.node}
    if public_url:
        device["configuration_url"] = f"{public_url.rstrip('/')}/api/cameras/{camera_id}"
    configs: dict[str, dict[str, Any]] = {}
    for group in OBJECT_GROUPS:
        configs[topics.discovery("binary_sensor", node, group)] = {
            **_common(topics, node, group, device), "name": group.capitalize(),
            "state_topic": topics.camera(camera_id, group), "device_class": "occupancy",
            "payload_on": ON, "payload_off": OFF, "icon": GROUP_ICONS[group]}
    configs[topics.discovery("sensor", node, "risk")] = {
        **_common(topics, node, "risk", device), "name": "Risk",
        "state_topic": topics.camera(camera_id, "risk"),
        "json_attributes_topic": topics.camera(camera_id, "risk/attributes"),
        "state_class": "measurement", "icon": "mdi:shield-alert"}
    configs[topics.discovery("image", node, "snapshot")] = {
        **_common(topics, node, "snapshot", device), "name": "Snapshot",
        "image_topic": topics.camera(camera_id, "snapshot"), "content_type": "image/jpeg"}
    configs[topics.discovery("event", node, "alert")] = {
        **_common(topics, node, "alert", device), "name": "Alert",
        "state_topic": topics.camera(camera_id, "alert"), "event_types": [EVENT_TYPE],
        "icon": "mdi:alarm-light"}
    return configs


def camera_state_topics(topics: Topics, camera_id: str) -> list[str]:
    """The camera's retained state topics, cleared when the camera is removed."""
    return [topics.camera(camera_id, key)
            for key in (*OBJECT_GROUPS, "risk", "risk/attributes", "snapshot")]


def hub_configs(topics: Topics) -> dict[str, dict[str, Any]]:
    """The discovery topic -> config of each of the hub's sensors."""
    device = hub_device(topics)
    return {topics.discovery("sensor", topics.node, key): {
        **_common(topics, topics.node, key, device), **extra,
        "state_topic": topics.hub(key), "entity_category": "diagnostic"}
        for key, extra in HUB_SENSORS.items()}
