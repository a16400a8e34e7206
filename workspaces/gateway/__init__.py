"""The gateway: HAProxy as the data plane, Hearth as its control plane (tokens, config, routes, process)."""
