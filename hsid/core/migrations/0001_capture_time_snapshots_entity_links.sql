-- 0001: from the first released schema (commit b45dcc4, "the reference's 17 tables") to the
-- schema of the release that introduced numbered migrations. Everything hsid added in
-- between, so a database of any release before this one ends up exactly as a fresh one:
--   * detections.captured_at (capture time) and its index; the object_type index
--   * snapshots (uploads known by their content)
--   * events: the risk_level, review-queue and ended_at indexes
--   * alert_rules.skip_trusted_entities; entity_detections (an entity's detections)
-- Idempotent: releases after the first already have some of it (their schema.sql added
-- the columns with ADD COLUMN IF NOT EXISTS), so every statement is IF NOT EXISTS.
-- Runs in one transaction (hsid/core/db.py); column order matches a fresh database, as
-- each added column is the last of its table there too.

ALTER TABLE detections ADD COLUMN IF NOT EXISTS captured_at timestamptz;
CREATE INDEX IF NOT EXISTS idx_detections_object_type ON detections (object_type, detected_at DESC);
CREATE INDEX IF NOT EXISTS idx_detections_camera_happened
    ON detections (camera_id, (coalesce(captured_at, detected_at)));

CREATE TABLE IF NOT EXISTS snapshots (
    sha256          varchar(64)     NOT NULL,
    file_path       varchar         NOT NULL,
    camera_id       varchar         NOT NULL,
    image_path      varchar         NOT NULL,
    size            bigint          NOT NULL,
    mtime_ns        bigint          NOT NULL,
    detection_ids   integer[]       NOT NULL DEFAULT '{}',
    outcome         varchar         NOT NULL,
    reason          text,
    taken_at        timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (sha256, file_path),
    CONSTRAINT fk_snapshots_camera_id FOREIGN KEY (camera_id)
        REFERENCES cameras (id) ON DELETE CASCADE,
    CONSTRAINT ck_snapshots_outcome CHECK (outcome IN ('processed', 'dead_lettered'))
);
CREATE INDEX IF NOT EXISTS idx_snapshots_file_path ON snapshots (file_path);
CREATE INDEX IF NOT EXISTS idx_snapshots_camera_copies ON snapshots (camera_id)
    WHERE image_path <> file_path;
CREATE INDEX IF NOT EXISTS idx_snapshots_taken_at ON snapshots (taken_at);

CREATE INDEX IF NOT EXISTS idx_events_camera_ended ON events (camera_id, ended_at);
CREATE INDEX IF NOT EXISTS idx_events_risk_level ON events (risk_level, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_events_unreviewed ON events (camera_id, risk_score)
    WHERE NOT reviewed;

-- Existing rules pass over trusted entities, as new ones do by default.
ALTER TABLE alert_rules
    ADD COLUMN IF NOT EXISTS skip_trusted_entities boolean NOT NULL DEFAULT true;

CREATE TABLE IF NOT EXISTS entity_detections (
    detection_id    integer         NOT NULL,
    entity_id       uuid            NOT NULL,
    similarity      double precision,
    embedding       real[]          NOT NULL,
    linked_at       timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT entity_detections_pkey PRIMARY KEY (detection_id),
    CONSTRAINT fk_entity_detections_detection_id FOREIGN KEY (detection_id)
        REFERENCES detections (id) ON DELETE CASCADE,
    CONSTRAINT fk_entity_detections_entity_id FOREIGN KEY (entity_id)
        REFERENCES entities (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_entity_detections_entity_id ON entity_detections (entity_id);
