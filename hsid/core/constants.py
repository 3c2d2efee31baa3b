"""Redis key names, channels and fixed timings shared by the stages (names from the reference)."""

# --- Queues: Redis lists of JSON items in the reference's shapes ---------------------------
DETECTION_QUEUE = "detection_queue"
ANALYSIS_QUEUE = "analysis_queue"
DLQ_PREFIX = "dlq:"  # dlq:<queue name> holds jobs that failed max_attempts times
# Per-worker in-flight list; an item sits here between take and acknowledge so a crash
# never loses it. Recovered into its queue at start-up.
PROCESSING_PREFIX = "processing:"  # processing:<queue>:<worker id>
QUEUE_NAMES = (DETECTION_QUEUE, ANALYSIS_QUEUE)

# --- Dedupe ----------------------------------------------------------------------------------
DEDUPE_PREFIX = "dedupe:"  # dedupe:<sha256 of content> -> file path, TTL DEDUPE_TTL_SECONDS

# --- Batch aggregation state (reference: all with a 1 h TTL) -------------------------------
BATCH_KEY_TTL_SECONDS = 3600
BATCH_CURRENT = "batch:{camera_id}:current"
BATCH_CAMERA = "batch:{batch_id}:camera_id"
BATCH_DETECTIONS = "batch:{batch_id}:detections"
BATCH_STARTED_AT = "batch:{batch_id}:started_at"
BATCH_LAST_ACTIVITY = "batch:{batch_id}:last_activity"
# hsid's extension for backlogs (snapshots taken well before they arrived): a camera's open
# backlog batch, beside its live `current` one, and a batch's capture-time span, JSON
# [first, last] in epoch seconds. Backlogs are cut by capture time, not by the clock.
BATCH_BACKLOG = "batch:{camera_id}:backlog"
BATCH_CAPTURED = "batch:{batch_id}:captured"
# hsid's extension for episodes (one person walking past is one story): a camera's open
# episode id, with a TTL of batch.idle_seconds refreshed by each detection of a fast-path
# class; and the episode a live batch belongs to (same TTL as the batch's other keys).
BATCH_EPISODE = "batch:{camera_id}:episode"
BATCH_EPISODE_ID = "batch:{batch_id}:episode_id"
# Fair analysis scheduling (hsid's extension): a hash of the last camera served, how many
# in a row, and when each camera was last served (a sequence number).
ANALYSIS_SCHEDULE = "analysis_queue:schedule"
# LLM budget: llm_budget:<camera id>:<hour since epoch> counts that hour's LLM analyses;
# kept two hours so the counter outlives its hour.
LLM_BUDGET_PREFIX = "llm_budget:"
LLM_BUDGET_TTL_SECONDS = 7200

# --- Poison jobs -----------------------------------------------------------------------------
# A queue item that was in flight this many times when the daemon died is taken to be what
# killed it (a poison image or batch) and is not processed that way again: detection sends
# it to the DLQ, analysis scores it by the rules. Two, not one: a single death is as likely a
# power cut or an OOM kill that had nothing to do with the item. The workers' messages say
# "twice": keep them in step.
POISON_CRASH_COUNT = 2

# --- Pub/sub channels -------------------------------------------------------------------------
SECURITY_EVENTS_CHANNEL = "security_events"
SYSTEM_STATUS_CHANNEL = "system_status"

# --- Singleton duties: one process in a scaled-out install holds each lock -------------------
LOCK_PREFIX = "lock:"  # lock:<duty> -> owner id, short TTL renewed while held
LOCK_TTL_SECONDS = 15

# --- Reconciliation: Redis keeps nothing on disk, so a restart empties it -------------------
# reconciled:<duty> is set (no TTL) by whoever rebuilt that duty's Redis state; finding it
# gone means Redis lost its data, and the duty's state is rebuilt again (broker.state_lost).
RECONCILED_PREFIX = "reconciled:"
RECONCILE_CHECK_SECONDS = 5.0  # how soon after Redis comes back empty the rebuild starts

# --- Supervision ------------------------------------------------------------------------------
RESTART_BACKOFF_INITIAL_SECONDS = 1.0
RESTART_BACKOFF_MAX_SECONDS = 60.0
# Like Frigate's watchdog: a stage that dies this often this quickly is broken, not unlucky.
RESTART_MAX_CRASHES = 10
RESTART_WINDOW_SECONDS = 600.0

# --- Files under state_dir --------------------------------------------------------------------
# hsid's copies of uploads whose file name a camera re-uses (pipeline/snapshots.py); cleanup
# removes them with their rows.
SNAPSHOTS_DIR = "snapshots"

# The model name whose prompt_configs row drives the risk analyzer.
ANALYZER_PROMPT_MODEL = "nemotron"
