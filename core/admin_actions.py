"""What the admin's bulk actions share: calling a service per selected object and reporting the outcome."""
from django.contrib import messages

from tenants.exceptions import ServiceError


def run_service(modeladmin, request, objects, call, done):
    """Call a service per object; report successes and each refusal with its message. Returns the successes."""
    succeeded = 0
    for obj in objects:
        try:
            call(obj)
        except ServiceError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)
    return succeeded
