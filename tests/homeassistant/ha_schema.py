"""Checks a discovery config against the fixture written from Home Assistant's MQTT
discovery documentation (ha_mqtt_discovery.json)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).with_name("ha_mqtt_discovery.json")
ID = re.compile(r"[A-Za-z0-9_-]+")


@cache
def documented() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def problems(topic: str, config: dict[str, Any], discovery_prefix: str) -> list[str]:
    """What Home Assistant would refuse or silently drop in `config` published on `topic`;
    empty when it is a valid discovery config."""
    doc = documented()
    found: list[str] = []
    match = re.fullmatch(rf"{re.escape(discovery_prefix)}/(\w+)/(?:([^/]+)/)?([^/]+)/config",
                         topic)
    if match is None:
        return [f"{topic} is not a discovery topic under {discovery_prefix}"]
    component, node, entity = match.groups()
    spec = doc["components"].get(component)
    if spec is None:
        return [f"{component} is not one of the components checked"]
    for part in (node, entity):
        if part is not None and not ID.fullmatch(part):
            found.append(f"{part!r} in the topic is not [a-zA-Z0-9_-]+")
    allowed = set(doc["entity_common"]["optional"]) | set(spec["required"]) | set(
        spec.get("one_of", [])) | set(spec["optional"])
    found += [f"{component}: unknown key {key}" for key in sorted(set(config) - allowed)]
    found += [f"{component}: missing {key}" for key in spec["required"] if key not in config]
    if spec.get("one_of") and not any(key in config for key in spec["one_of"]):
        found.append(f"{component}: needs one of {spec['one_of']}")
    for pair in spec.get("exclusive", []):
        if all(key in config for key in pair):
            found.append(f"{component}: {pair} exclude each other")
    if "device_class" in config and config["device_class"] not in spec.get("device_classes", []):
        found.append(f"{component}: device_class {config['device_class']!r} unknown")
    if "state_class" in config and config["state_class"] not in spec.get("state_classes", []):
        found.append(f"{component}: state_class {config['state_class']!r} unknown")
    if "entity_category" in config and config["entity_category"] not in doc["entity_categories"]:
        found.append(f"entity_category {config['entity_category']!r} unknown")
    found += _device_problems(config, doc)
    found += _origin_problems(config, doc)
    return found


def _device_problems(config: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    device = config.get("device")
    if device is None:
        return []
    spec = doc["device"]
    found = [f"device: unknown key {key}"
             for key in sorted(set(device) - set(spec["one_of"]) - set(spec["optional"]))]
    if not any(device.get(key) for key in spec["one_of"]):
        found.append(f"device: needs one of {spec['one_of']}")
    if not all(isinstance(i, str) for i in device.get("identifiers", [])):
        found.append("device: identifiers must be strings")
    if spec["needs_entity_key"] not in config:
        found.append("device: only used with a unique_id")
    return found


def _origin_problems(config: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    origin = config.get("origin")
    if origin is None:
        return []
    spec = doc["origin"]
    found = [f"origin: unknown key {key}"
             for key in sorted(set(origin) - set(spec["required"]) - set(spec["optional"]))]
    return found + [f"origin: missing {key}" for key in spec["required"] if key not in origin]
