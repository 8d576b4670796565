"""a deleted resource's row keeps its key and stamps only; a resolved quarantine drops the resource it held;
quarantine errors quote no values

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25

Until now a resource deleted in the EHR stayed in the snapshot as a tombstone with every field it had: the
patient's name, birth date, telecom and postcode, a visit's reasons and times. No PRM query reads a tombstone;
it is there so that no older copy of the resource can bring it back, for which its key and stamps suffice.
From this revision `prm.snapshots.mark_deleted` empties the rest as it marks a row, and this migration empties
the tombstones already stored. Likewise a quarantined resource kept the whole resource after the EHR had sent a
valid version or deleted it; resolved rows now keep the type, id, version, error and times, not the resource.
And a quarantine error quoted the value it refused (jsonschema's words: a birth date, a phone number, for a
choice element the whole resource); errors are now worded from the rule (`fhir_mappings.r4_schema.rule_broken`),
and the quoted parts of those stored before are left out here.

The columns are listed here as they stand at this revision (not read from the models, which may change
after it); each goes back to its model default.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NONE = (None, sa.null())  # NULL itself: a typed None would bind as text, which timestamptz refuses
_LIST = (sa.JSON, [])
EMPTIED: dict[str, dict[str, tuple[Any, Any]]] = {
    'patient_record': {
        'active': (sa.Boolean, True), 'deceased': (sa.Boolean, False), 'display_name': (sa.String, ''),
        'birth_date': _NONE, 'gender': _NONE, 'postcode': _NONE, 'managing_organization': _NONE,
        'replaced_by': _NONE, 'telecom': _LIST, 'languages': _LIST, 'general_practitioners': _LIST, 'links': _LIST,
    },
    'visit': {
        'patient_id': _NONE, 'class_code': _NONE, 'type_codes': _LIST, 'service_type_codes': _LIST,
        'type_text': _NONE, 'start_at': _NONE, 'start_offset_min': _NONE, 'end_at': _NONE, 'end_offset_min': _NONE,
        'location_ids': _LIST, 'service_provider': _NONE, 'appointment_ids': _LIST, 'practitioners': _LIST,
    },
    'booking': {
        'patient_id': _NONE, 'start_at': _NONE, 'start_offset_min': _NONE, 'end_at': _NONE, 'end_offset_min': _NONE,
        'minutes_duration': _NONE, 'service_type_codes': _LIST, 'appointment_type_codes': _LIST, 'type_text': _NONE,
        'cancelation_reason': _NONE, 'location_ids': _LIST, 'practitioners': _LIST, 'related_people': _LIST,
    },
    'related_contact': {
        'patient_id': _NONE, 'active': (sa.Boolean, True), 'display_name': (sa.String, ''),
        'relationship_codes': _LIST, 'telecom': _LIST,
    },
    'organization_record': {'name': (sa.String, ''), 'active': (sa.Boolean, True), 'part_of': _NONE, 'timezone': _NONE},
    'site': {'name': (sa.String, ''), 'status': _NONE, 'part_of': _NONE, 'organization_id': _NONE, 'timezone': _NONE},
    'staff_role': {
        'active': (sa.Boolean, True), 'practitioner_id': _NONE, 'organization_id': _NONE, 'location_ids': _LIST,
        'codes': _LIST, 'specialty_codes': _LIST,
    },
    'written_resource': {'identifier_value': _NONE, 'status': _NONE, 'business_status': _NONE},
}


QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def upgrade() -> None:
    for name, columns in EMPTIED.items():
        table = sa.table(name, sa.column('deleted', sa.Boolean), *(sa.column(c, t) for c, (t, _) in columns.items()))  # type: ignore[arg-type]
        op.execute(table.update().where(table.c.deleted.is_(True))
                   .values({c: value for c, (_, value) in columns.items()}))
    quarantine = sa.table('quarantined_resource', sa.column('payload', sa.JSON), sa.column('resolved_at'))
    op.execute(quarantine.update().where(quarantine.c.resolved_at.is_not(None)).values(payload={}))
    errors = sa.table('quarantined_resource', sa.column('id'), sa.column('error'))
    bind = op.get_bind()
    for row_id, error in bind.execute(sa.select(errors.c.id, errors.c.error)).all():  # few: IT's list
        if QUOTED.search(error):
            bind.execute(errors.update().where(errors.c.id == row_id).values(error=QUOTED.sub("'…'", error)))


def downgrade() -> None:
    """Nothing to restore: what was emptied is gone (the EHR no longer has it either)."""
