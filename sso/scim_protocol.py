"""SCIM 2.0's wire format (RFC 7643/7644), as much of it as Hearth serves: the error and list messages, the
User and Group resources, `filter=<attribute> eq "<value>"`, paging, and the PATCH operations applied to a
resource's values. No database here: sso/scim_api.py reads and writes through sso.selectors and sso.scim."""
import json
import re

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CONTENT_TYPE = "application/scim+json"
DEFAULT_COUNT, MAX_COUNT = 100, 200
# RFC 7644 3.12's detail keywords; a service error whose code is one of them carries it as scimType.
SCIM_TYPES = {"invalidFilter", "tooMany", "uniqueness", "mutability", "invalidSyntax", "invalidPath", "noTarget",
              "invalidValue", "invalidVers", "sensitive"}

# User attributes Hearth keeps (lower-case path → its name in the values handed to sso.scim).
USER_ATTRIBUTES = {"username": "user_name", "externalid": "external_id", "active": "active",
                   "name.givenname": "given_name", "name.familyname": "family_name"}
# Attributes of the core User schema (and the enterprise extension) that directories send and Hearth does not keep:
# accepted and ignored, so Okta's and Entra ID's full profiles provision. Anything else is an invalidPath.
USER_IGNORED = {"displayname", "nickname", "profileurl", "title", "usertype", "preferredlanguage", "locale",
                "timezone", "password", "emails", "phonenumbers", "ims", "photos", "addresses", "entitlements",
                "roles", "x509certificates", "name", "name.formatted", "name.middlename", "name.honorificprefix",
                "name.honorificsuffix", "schemas", "id", "meta", "groups"}
GROUP_ATTRIBUTES = {"displayname": "display_name", "externalid": "external_id", "members": "members"}
GROUP_IGNORED = {"schemas", "id", "meta"}
FILTERS = {"User": {"username": "user_name__iexact", "externalid": "external_id", "id": "pk"},
           "Group": {"displayname": "display_name__iexact", "externalid": "external_id", "id": "pk"}}
_FILTER = re.compile(r'^\s*([A-Za-z][\w.:]*)\s+([A-Za-z]+)\s+"((?:[^"\\]|\\.)*)"\s*$')
_MEMBER_PATH = re.compile(r'^members\[\s*value\s+eq\s+"([^"]*)"\s*\]$', re.IGNORECASE)


class ScimError(Exception):
    """A SCIM error response: status, detail and (400s, some 409s) a scimType keyword."""

    def __init__(self, status, detail, scim_type=None):
        super().__init__(detail)
        self.status, self.detail, self.scim_type = status, detail, scim_type

    def body(self):
        return error_body(self.status, self.detail, self.scim_type)


def error_body(status, detail, scim_type=None):
    return {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail,
            **({"scimType": scim_type} if scim_type else {})}


def list_body(resources, *, total, start_index):
    return {"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start_index,
            "itemsPerPage": len(resources), "Resources": resources}


# --- reading a request -----------------------------------------------------------------------------------------------


def paging(params):
    """(startIndex, count) from the query string: 1-based; below 1 counts as 1, a negative count as 0 (RFC 7644
    3.4.2.4); at most MAX_COUNT a page."""
    def number(name, default):
        raw = params.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise ScimError(400, f"{name} must be an integer, not '{raw}'.", "invalidValue") from None

    return max(1, number("startIndex", 1)), min(MAX_COUNT, max(0, number("count", DEFAULT_COUNT)))


def filter_lookup(raw, resource):
    """`attribute eq "value"` → {ORM lookup: value}; None without a filter. Other operators and attributes are an
    invalidFilter (400) that says what is supported."""
    if raw is None or not raw.strip():
        return None
    match = _FILTER.match(raw)
    supported = ", ".join(f'{name} eq "…"' for name in ("userName", "externalId", "id") if resource == "User") or \
        ", ".join(f'{name} eq "…"' for name in ("displayName", "externalId", "id"))
    if not match:
        raise ScimError(400, f"Unsupported filter '{raw}': use {supported}.", "invalidFilter")
    attribute, operator, value = match.groups()
    lookup = FILTERS[resource].get(attribute.lower().removeprefix(f"{USER_SCHEMA.lower()}:"))
    if operator.lower() != "eq" or lookup is None:
        raise ScimError(400, f"Unsupported filter '{raw}': use {supported}.", "invalidFilter")
    try:
        value = json.loads(f'"{value}"')
    except ValueError:
        raise ScimError(400, f"Bad string in filter '{raw}'.", "invalidFilter") from None
    return {lookup: value}


def body_object(data):
    if not isinstance(data, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    return data


def _bool(value, path):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):  # Entra ID sends "False"
        return value.lower() == "true"
    raise ScimError(400, f"'{path}' must be true or false.", "invalidValue")


def _str(value, path):
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ScimError(400, f"'{path}' must be a string.", "invalidValue")
    return str(value)


def _user_set(values, path, value):
    """Set one attribute of a user's values; known but not kept attributes are ignored."""
    key = path.lower().removeprefix(f"{USER_SCHEMA.lower()}:")
    if key.startswith(ENTERPRISE_USER_SCHEMA.lower()) or key.split("[", 1)[0] in USER_IGNORED:
        if key == "name" and isinstance(value, dict):
            for sub, sub_value in value.items():
                _user_set(values, f"name.{sub}", sub_value)
        return
    name = USER_ATTRIBUTES.get(key)
    if name is None:
        raise ScimError(400, f"'{path}' is not an attribute of a SCIM User.", "invalidPath")
    values[name] = _bool(value, path) if name == "active" else _str(value, path)


def user_values(data, *, require_user_name=True):
    """The values of a User resource (POST, PUT) for sso.scim."""
    data = body_object(data)
    schemas = data.get("schemas")
    if schemas is not None and USER_SCHEMA not in (schemas if isinstance(schemas, list) else []):
        raise ScimError(400, f"'schemas' must include {USER_SCHEMA}.", "invalidSyntax")
    values = {}
    for key, value in data.items():
        if key.lower() == ENTERPRISE_USER_SCHEMA.lower():
            continue
        if key.lower() == "name":
            if not isinstance(value, dict):
                raise ScimError(400, "'name' must be an object.", "invalidValue")
            for sub, sub_value in value.items():
                _user_set(values, f"name.{sub}", sub_value)
            continue
        _user_set(values, key, value)
    if require_user_name and not values.get("user_name"):
        raise ScimError(400, "userName is required (the user's email address).", "invalidValue")
    return values


def patch_operations(data):
    data = body_object(data)
    if PATCH_SCHEMA not in (data.get("schemas") or []):
        raise ScimError(400, f"A PATCH body has 'schemas': ['{PATCH_SCHEMA}'].", "invalidSyntax")
    operations = data.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise ScimError(400, "A PATCH body has a non-empty 'Operations' list.", "invalidSyntax")
    for operation in operations:
        if not isinstance(operation, dict):
            raise ScimError(400, "Each operation is an object with 'op', 'path' and 'value'.", "invalidSyntax")
        op = str(operation.get("op") or "").lower()
        if op not in ("add", "replace", "remove"):
            raise ScimError(400, f"Unknown op '{operation.get('op')}': use add, replace or remove.", "invalidSyntax")
        path = operation.get("path")
        if path is not None and not isinstance(path, str):
            raise ScimError(400, "'path' must be a string.", "invalidPath")
        yield op, path, operation.get("value")


def user_patch(data):
    """The changes a PATCH makes to a user, as values for sso.scim.scim_user_update."""
    values = {}
    for op, path, value in patch_operations(data):
        if op == "remove":
            key = (path or "").lower()
            if key in ("externalid", "name.givenname", "name.familyname"):
                values[USER_ATTRIBUTES[key]] = ""
            elif key.split("[", 1)[0] in USER_IGNORED or key.startswith(ENTERPRISE_USER_SCHEMA.lower()):
                continue
            elif key in USER_ATTRIBUTES:
                raise ScimError(400, f"'{path}' is required and cannot be removed.", "mutability")
            else:
                raise ScimError(400, f"'{path}' is not an attribute of a SCIM User that can be removed.",
                                "invalidPath" if path else "noTarget")
        elif path:
            _user_set(values, path, value)
        elif isinstance(value, dict):
            values.update(user_values(value, require_user_name=False))
        else:
            raise ScimError(400, "An operation without 'path' has an object 'value'.", "invalidSyntax")
    return values


def _member_ids(value, path="members"):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, dict) and "value" in m for m in value):
        raise ScimError(400, f"'{path}' is a list of {{\"value\": \"<user id>\"}}.", "invalidValue")
    return [str(m["value"]) for m in value]


def group_values(data):
    """The values of a Group resource (POST, PUT) for sso.scim."""
    data = body_object(data)
    schemas = data.get("schemas")
    if schemas is not None and GROUP_SCHEMA not in (schemas if isinstance(schemas, list) else []):
        raise ScimError(400, f"'schemas' must include {GROUP_SCHEMA}.", "invalidSyntax")
    values = {}
    for key, value in data.items():
        name = GROUP_ATTRIBUTES.get(key.lower())
        if name == "members":
            values["members"] = _member_ids(value)
        elif name:
            values[name] = _str(value, key)
        elif key.lower() not in GROUP_IGNORED:
            raise ScimError(400, f"'{key}' is not an attribute of a SCIM Group.", "invalidPath")
    if not values.get("display_name"):
        raise ScimError(400, "displayName is required.", "invalidValue")
    return values


def group_patch(data):
    """The changes a PATCH makes to a group: display_name, external_id, add, remove, members (replace all)."""
    changes = {"add": [], "remove": []}
    for op, path, value in patch_operations(data):
        key = (path or "").lower()
        member = _MEMBER_PATH.match(path or "")
        if member and op == "remove":
            changes["remove"].append(member.group(1))
        elif key == "members":
            ids = _member_ids(value)
            if op == "add":
                changes["add"] += ids
            elif op == "remove":
                if value is None:
                    changes["members"] = []
                else:
                    changes["remove"] += ids
            else:
                changes["members"], changes["add"], changes["remove"] = ids, [], []
        elif key in ("displayname", "externalid") and op != "remove":
            changes[GROUP_ATTRIBUTES[key]] = _str(value, path)
        elif not path and op != "remove" and isinstance(value, dict):
            for sub, sub_value in value.items():
                name = GROUP_ATTRIBUTES.get(sub.lower())
                if name == "members":
                    if op == "add":
                        changes["add"] += _member_ids(sub_value)
                    else:
                        changes["members"], changes["add"], changes["remove"] = _member_ids(sub_value), [], []
                elif name:
                    changes[name] = _str(sub_value, sub)
                elif sub.lower() not in GROUP_IGNORED:
                    raise ScimError(400, f"'{sub}' is not an attribute of a SCIM Group.", "invalidPath")
        else:
            raise ScimError(400, f"Cannot {op} '{path}' of a SCIM Group: use members, "
                                 f"members[value eq \"…\"] or displayName.", "invalidPath" if path else "noTarget")
    return changes


# --- writing a response ---------------------------------------------------------------------------------------------


def _meta(resource_type, row, location):
    return {"resourceType": resource_type, "created": row.created_at.isoformat(),
            "lastModified": row.updated_at.isoformat(), "location": location,
            "version": f'W/"{int(row.updated_at.timestamp() * 1_000_000)}"'}


def user_resource(scim_user, *, base_url):
    user = scim_user.user
    formatted = " ".join(part for part in (user.first_name, user.last_name) if part)
    return {
        "schemas": [USER_SCHEMA],
        "id": str(scim_user.pk),
        **({"externalId": scim_user.external_id} if scim_user.external_id else {}),
        "userName": scim_user.user_name,
        "name": {"givenName": user.first_name, "familyName": user.last_name, "formatted": formatted},
        "displayName": formatted or scim_user.user_name,
        "emails": [{"value": scim_user.user_name, "type": "work", "primary": True}],
        "active": scim_user.active,
        "groups": [{"value": str(g.pk), "display": g.display_name, "$ref": f"{base_url}/Groups/{g.pk}"}
                   for g in scim_user.groups.all()],
        "meta": _meta("User", scim_user, f"{base_url}/Users/{scim_user.pk}"),
    }


def group_resource(group, *, base_url, members=True):
    resource = {
        "schemas": [GROUP_SCHEMA],
        "id": str(group.pk),
        **({"externalId": group.external_id} if group.external_id else {}),
        "displayName": group.display_name,
        "meta": _meta("Group", group, f"{base_url}/Groups/{group.pk}"),
    }
    if members:
        resource["members"] = [{"value": str(u.pk), "display": u.user_name, "$ref": f"{base_url}/Users/{u.pk}"}
                               for u in group.members.all()]
    return resource
