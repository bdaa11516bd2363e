"""`field__any=[...]`: membership in a list of integers, as one array parameter.

Django's `__in` writes `IN (%s, %s, ...)` and prepares every element on its own;
for the hundreds or thousands of ids a claim, a chunk or a flush names, that
preparing cost the sending workers more CPU than the statement itself, and each
length of list is a new statement text. `__any` writes `= ANY(%s::bigint[])` on
PostgreSQL (one parameter, one text) and falls back to `IN` elsewhere (SQLite).
"""

from __future__ import annotations

from django.core.exceptions import EmptyResultSet
from django.db.models import BigAutoField, BigIntegerField, Lookup


@BigAutoField.register_lookup
@BigIntegerField.register_lookup
class AnyOf(Lookup):
    lookup_name = "any"
    # The list is passed as it is, not through the field's get_prep_value (which takes one value).
    prepare_rhs = False

    def _values(self) -> list[int]:
        return [int(value) for value in self.rhs]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = self._values()
        if not values:
            raise EmptyResultSet
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", [*lhs_params, *values]

    def as_postgresql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::bigint[])", [*lhs_params, self._values()]
