"""The pipeline stages: watcher, dedupe, detection, thumbnails, batching and analysis."""
