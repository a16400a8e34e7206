"""Workspaces: templates, workspaces, nodes, containers, sessions; the runtime, the pool, the gateway."""
