"""REST API v1 routes (every app's API lives under /api/v1/)."""
urlpatterns = []
