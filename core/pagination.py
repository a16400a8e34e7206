"""Keyset pagination of the API's lists: the body stays a JSON list, the next page is in a `Link` header."""
import base64
import json

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.response import Response

from core.api import shared_representation

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 500
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description=f"Items per page, 1–{PAGE_SIZE_MAX} (default "
                                                f"{PAGE_SIZE_DEFAULT})."),
    OpenApiParameter("after", str, description="The opaque cursor from the previous page's `Link: <…>; "
                                                "rel=\"next\"` header."),
]


def paged_response(request, queryset, serializer_class, *, order=("-pk",)):
    """A list answer, one page at a time: the body stays a JSON list; the next page is in a `Link` header.

    Keyset pagination on `order`, whose last field must be unique (the primary key): a page never repeats or
    skips an item when rows are added meanwhile, and page 1,000 costs what page 1 does. The cursor is the last
    item's values of `order`, opaque to clients.
    """
    page = Page(request, queryset.model, order)
    rows = queryset.order_by(*order)
    if page.after is not None:
        rows = rows.filter(_after(order, page.after))
    rows = list(rows[: page.limit + 1])
    fields = [field.lstrip("-") for field in order]
    represent = _representations.get(serializer_class) or _representations.setdefault(
        serializer_class, shared_representation(serializer_class))
    return page.response([represent(row) for row in rows[: page.limit]], rows,
                         lambda row: [getattr(row, field) for field in fields])


_representations = {}  # serializer class -> its shared to_representation (core.api.shared_representation)


class Page:
    """One page of a list request, for lists read without the ORM: `limit`, and `after`, the decoded cursor (the
    previous page's last values of `order`) or None on the first page. Fetch `limit + 1` rows after it in `order`,
    then answer with `response()`: the same body, cursor and `Link` header as `paged_response`."""

    def __init__(self, request, model, order=("-pk",)):
        self.request, self.order = request, order
        self.limit = _query_int(request, "limit", default=PAGE_SIZE_DEFAULT, low=1, high=PAGE_SIZE_MAX)
        after = request.query_params.get("after")
        self.after = _cursor_decode(after, model, order) if after else None

    def response(self, items, rows, values_of):
        """`items`: the first `limit` of `rows` as the body says them; `rows`: up to `limit + 1` fetched (one more
        means there is a next page); `values_of(row)`: a row's values of `order`."""
        response = Response(items)
        if len(rows) > self.limit:
            request = self.request
            query = request.query_params.copy()
            query["after"] = _cursor_encode(values_of(rows[self.limit - 1]))
            query["limit"] = str(self.limit)
            response["Link"] = f'<{request.build_absolute_uri(request.path)}?{query.urlencode()}>; rel="next"'
        return response


def _after(order, values):
    """Rows after `values` in `order`: (a < x) or (a = x and b < y) …, with > for ascending fields."""
    condition, equal = Q(pk__in=[]), Q()
    for field, value in zip(order, values, strict=True):
        name = field.lstrip("-")
        condition |= equal & Q(**{f"{name}__{'lt' if field.startswith('-') else 'gt'}": value})
        equal &= Q(**{name: value})
    return condition


def _cursor_encode(values):
    raw = json.dumps([value.isoformat() if hasattr(value, "isoformat") else str(value) for value in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _cursor_decode(cursor, model, order):
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(order):
            raise ValueError(cursor)
        fields = [model._meta.pk if f.lstrip("-") == "pk" else model._meta.get_field(f.lstrip("-")) for f in order]
        return [field.to_python(value) for field, value in zip(fields, raw, strict=True)]
    except (ValueError, TypeError, DjangoValidationError, FieldDoesNotExist):
        raise exceptions.ValidationError({"after": ["Not a cursor of this list: pass the `after` of a `Link` "
                                                    "header unchanged."]}) from None


def _query_int(request, name, *, default, low, high):
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise exceptions.ValidationError({name: [f"Must be a whole number from {low} to {high}."]})
    return value
