"""A small asyncio Kubernetes client over aiohttp: dict in, dict out, no model classes."""

from ffrtmp.kube.client import ApiError, KubeClient
from ffrtmp.kube.config import KubeConfig, load_config

__all__ = ["ApiError", "KubeClient", "KubeConfig", "load_config"]
