"""Discovery configs: valid for Home Assistant (as its documentation has them), grouped by
device, on topics that stay inside the configured prefixes."""

from __future__ import annotations

from hsid.core.config import MqttConfig
from hsid.homeassistant.discovery import (
    Topics,
    camera_configs,
    camera_state_topics,
    group_of,
    hub_configs,
)
from tests.homeassistant.ha_schema import problems

TOPICS = Topics(MqttConfig(url="mqtt://broker", discovery_prefix="homeassistant",
                           topic_prefix="hsid"))


def test_every_camera_config_is_one_home_assistant_takes() -> None:
    configs = camera_configs(TOPICS, "front_door", "Front door", "https://hsid.example.net")

    assert sorted(configs) == [
        "homeassistant/binary_sensor/hsid_front_door/animal/config",
        "homeassistant/binary_sensor/hsid_front_door/person/config",
        "homeassistant/binary_sensor/hsid_front_door/vehicle/config",
        "homeassistant/event/hsid_front_door/alert/config",
        "homeassistant/image/hsid_front_door/snapshot/config",
        "homeassistant/sensor/hsid_front_door/risk/config",
    ]
    for topic, config in configs.items():
        assert problems(topic, config, "homeassistant") == [], topic


def test_the_hub_configs_are_ones_home_assistant_takes() -> None:
    configs = hub_configs(TOPICS)

    assert sorted(configs) == [f"homeassistant/sensor/hsid/{key}/config" for key in (
        "detector_provider", "health", "inference_rate", "queue_depth")]
    for topic, config in configs.items():
        assert problems(topic, config, "homeassistant") == [], topic


def test_a_cameras_entities_share_its_device_under_the_hub() -> None:
    configs = camera_configs(TOPICS, "front_door", "Front door", "https://hsid.example.net")
    devices = {str(config["device"]) for config in configs.values()}
    unique_ids = [config["unique_id"] for config in configs.values()]

    assert len(devices) == 1
    [device] = [config["device"] for config in configs.values()][:1]
    assert device["name"] == "Front door" and device["identifiers"] == ["hsid_front_door"]
    assert device["via_device"] == hub_configs(TOPICS)[
        "homeassistant/sensor/hsid/health/config"]["device"]["identifiers"][0]
    assert device["configuration_url"] == "https://hsid.example.net/api/cameras/front_door"
    assert len(set(unique_ids)) == len(unique_ids)
    assert all(config["availability_topic"] == "hsid/status" for config in configs.values())


def test_states_and_discovery_keep_to_their_prefixes() -> None:
    topics = Topics(MqttConfig(url="mqtt://b", discovery_prefix="ha/disc",
                               topic_prefix="site/hsid"))
    configs = camera_configs(topics, "Garage+#/x", "Garage")

    assert all(topic.startswith("ha/disc/") for topic in configs)
    states = [t for c in configs.values() for k, t in c.items() if k.endswith("_topic")]
    assert all(t.startswith("site/hsid/") and "+" not in t and "#" not in t for t in states)
    assert all(problems(topic, config, "ha/disc") == [] for topic, config in configs.items())
    assert set(camera_state_topics(topics, "Garage+#/x")) >= {
        configs["ha/disc/binary_sensor/site_hsid_Garage___x/person/config"]["state_topic"]}


def test_classes_fall_into_person_vehicle_and_animal() -> None:
    assert [group_of(c) for c in ("person", "car", "truck", "bicycle", "dog", "bird", "chair",
                                  None)] == ["person", "vehicle", "vehicle", "vehicle",
                                             "animal", "animal", None, None]


def test_the_check_catches_what_home_assistant_would_refuse_or_drop() -> None:
    topic, config = next(iter(camera_configs(TOPICS, "front_door", "Front door").items()))
    broken = {key: value for key, value in config.items() if key != "state_topic"}
    broken.update(stat_topic="x", device={"name": "no identifiers"}, device_class="person")

    assert problems(topic, broken, "homeassistant") == [
        "binary_sensor: unknown key stat_topic", "binary_sensor: missing state_topic",
        "binary_sensor: device_class 'person' unknown",
        "device: needs one of ['identifiers', 'connections']"]
