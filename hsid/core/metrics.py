"""Prometheus metrics: every counter, gauge and histogram hsid exports on /metrics.

Defined once here so names stay consistent; stages import and update them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 5 ms (a GPU inference) to 2 min (a slow CPU LLM under load).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

IMAGES_RECEIVED = Counter(
    "hsid_images_received", "Images seen complete in a camera folder", ["camera"],
    registry=REGISTRY)
IMAGES_DEDUPLICATED = Counter(
    "hsid_images_deduplicated", "Images skipped because the same content was seen", ["camera"],
    registry=REGISTRY)
IMAGES_REJECTED = Counter(
    "hsid_images_rejected", "Images refused (bad file, symlink, too large, ...)", ["camera"],
    registry=REGISTRY)
# Reasons: not_an_image, temporary_name, hidden_folder (cameras/layout.py), and the refusals
# symlink, outside_camera_root, symlinked_camera_folder, unreadable (cameras/registry.py).
FILES_IGNORED = Counter(
    "hsid_files_ignored", "Files under the camera root that hsid did not take, by reason "
    "(each time one appears)", ["reason"], registry=REGISTRY)
IMAGES_PROCESSED = Counter(
    "hsid_images_processed", "Images through detection and stored", ["camera"],
    registry=REGISTRY)
DETECTIONS = Counter(
    "hsid_detections", "Objects detected and stored", ["object_type"], registry=REGISTRY)
EVENTS = Counter("hsid_events", "Events created", ["risk_level"], registry=REGISTRY)
LLM_FALLBACKS = Counter(
    "hsid_llm_fallbacks", "Events scored by the rule-based fallback", ["reason"],
    registry=REGISTRY)
# Outcomes: passed (the first answer was true to the facts), corrected (the second was),
# rejected (both contradicted them: the rule scorer's result was kept). analysis/fact_guard.py
FACT_GUARD = Counter(
    "hsid_fact_guard", "LLM answers checked against the batch's facts, by outcome (passed, "
    "corrected, rejected)", ["outcome"], registry=REGISTRY)
FACT_CONTRADICTIONS = Counter(
    "hsid_fact_contradictions", "Claims in LLM answers that the batch's facts deny, by kind "
    "(time_of_day, object_class, object_count, context)", ["kind"], registry=REGISTRY)
# Paths: llm, rules-budget (the camera's analyzer.max_per_camera_hour was reached),
# rules-fallback (no model, a timeout, a failure, a poison batch).
ANALYSES = Counter(
    "hsid_analyses", "Batches assessed, by path (llm, rules-budget, rules-fallback)", ["path"],
    registry=REGISTRY)
ALERT_DELIVERIES = Counter(
    "hsid_alert_deliveries", "Alert channel delivery attempts by outcome (delivered, retrying, "
    "failed)", ["channel", "outcome"], registry=REGISTRY)
STATE_FILES_NOT_WRITTEN = Counter(
    "hsid_state_files_not_written", "Files not written because the state dir was full, by "
    "kind: thumbnails (the detection is stored, thumbnail_path NULL) or snapshot_copies (the "
    "upload is analysed where it arrived)", ["kind"], registry=REGISTRY)
DB_LOG_DROPPED = Counter(
    "hsid_db_log_records_dropped", "Log records not written to the logs table", registry=REGISTRY)

QUEUE_DEPTH = Gauge("hsid_queue_depth", "Items waiting in a queue", ["queue"], registry=REGISTRY)
DLQ_SIZE = Gauge("hsid_dlq_size", "Items in a dead-letter queue", ["queue"], registry=REGISTRY)
GPU_UTILIZATION = Gauge("hsid_gpu_utilization_percent", "GPU utilisation", registry=REGISTRY)
GPU_MEMORY_USED = Gauge("hsid_gpu_memory_used_mb", "GPU memory used", registry=REGISTRY)
GPU_TEMPERATURE = Gauge("hsid_gpu_temperature_celsius", "GPU temperature", registry=REGISTRY)
GPU_POWER = Gauge("hsid_gpu_power_watts", "GPU power draw", registry=REGISTRY)
INFERENCE_FPS = Gauge("hsid_inference_fps", "Detector images per second", registry=REGISTRY)

STAGE_LATENCY = Histogram(
    "hsid_stage_seconds", "Time spent per step", ["step"], buckets=LATENCY_BUCKETS,
    registry=REGISTRY)
# Steps: decode, inference, database, thumbnails (an image's crops, written), llm,
# upload_to_event (file complete -> event committed), embedding (model time per person or
# vehicle crop, pipeline/recognizer.py).
