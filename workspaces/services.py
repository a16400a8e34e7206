"""The workspaces app's writes, as other apps, the API, the portal, admin and tasks call them; each lives in the
module of its concern (the open, sessions, a workspace's own life, operators' actions) and is re-exported here."""
from workspaces.lifecycle import workspace_create, workspace_delete
from workspaces.opening import Opened, session_start, workspace_open
from workspaces.operations import node_drain, node_undrain, pool_pause
from workspaces.sessions import (
                                 quota_limit_at,
                                 session_close,
                                 session_end,
                                 session_touch,
                                 sessions_end_for_tenant,
                                 sessions_reclaim,
)

__all__ = [
    "Opened", "node_drain", "node_undrain", "pool_pause", "quota_limit_at", "session_close", "session_end",
    "session_start", "session_touch", "sessions_end_for_tenant", "sessions_reclaim", "workspace_create",
    "workspace_delete", "workspace_open",
]
