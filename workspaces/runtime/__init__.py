"""Container runtimes: the Runtime interface and its Docker implementation, one engine per Node."""
from .base import (
    ContainerExists,
    ContainerSpec,
    ImageNotFound,
    Resources,
    Runtime,
    RuntimeContainer,
    RuntimeError_,
    RuntimeUnavailable,
)
from .docker import DockerRuntime, network_name, runtime_for

__all__ = [
    "ContainerExists",
    "ContainerSpec",
    "DockerRuntime",
    "ImageNotFound",
    "Resources",
    "Runtime",
    "RuntimeContainer",
    "RuntimeError_",
    "RuntimeUnavailable",
    "network_name",
    "runtime_for",
]
