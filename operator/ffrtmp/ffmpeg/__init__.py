"""Everything about running ffmpeg: argv plans, progress, failures, probing and input safety."""
