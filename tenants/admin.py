"""The control plane for tenants, plans, invitations and the audit trail (filled in by the admin work)."""
from django.contrib import admin

from tenants.models import AuditLog, Invitation, Membership, Plan, Tenant, User

admin.site.register(User)
admin.site.register(Plan)
admin.site.register(Tenant)
admin.site.register(Membership)
admin.site.register(Invitation)
admin.site.register(AuditLog)
