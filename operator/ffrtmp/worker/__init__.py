"""The worker agent: runs the ffmpeg attempts the operator assigns to this worker Pod."""
