"""What every app shares and no app owns: the API toolkit, the mounting of the apps' APIs, health checks and the
helpers for hand-written SQL."""
