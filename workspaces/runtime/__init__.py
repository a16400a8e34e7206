"""Container runtimes: the Runtime interface and its Docker implementation, one engine per Node."""
from .base import (
    CONTAINER_END_EVENTS,
    ContainerExists,
    ContainerSpec,
    ImageNotFound,
    Resources,
    Runtime,
    RuntimeContainer,
    RuntimeError_,
    RuntimeEvent,
    RuntimeUnavailable,
)
from .docker import DockerRuntime, network_name, runtime_for

__all__ = [
    "CONTAINER_END_EVENTS",
    "ContainerExists",
    "ContainerSpec",
    "DockerRuntime",
    "ImageNotFound",
    "Resources",
    "Runtime",
    "RuntimeContainer",
    "RuntimeError_",
    "RuntimeEvent",
    "RuntimeUnavailable",
    "network_name",
    "runtime_for",
]
