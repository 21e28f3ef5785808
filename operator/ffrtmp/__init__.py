"""ffmpeg-rtmp: a Kubernetes operator that runs ffmpeg transcode jobs as custom resources."""

__version__ = "0.3.0"
