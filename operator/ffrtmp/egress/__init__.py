"""Egress policy and the loopback proxy that enforces it for ffmpeg."""
