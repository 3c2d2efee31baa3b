"""Pictures people look at: snapshots with their detections drawn, for the API, push
notifications and Home Assistant."""
