#
#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""A resource-data value changed atomically, whichever engine or worker changes it.

Heat keeps resource data as rows of (resource_id, key, value) without a unique key, and its
``data_set`` reads and then writes in two statements. With several engine workers a guest's
signals for one resource may be handled at the same moment by two of them (a retried signal, a
late one), while a third polls the resource: a read-then-write in the plugin would let an old
signal overwrite a newer one, and two first writes of a key would leave two rows.

``update`` runs the read, the decision and the write in one database transaction that holds the
resource's row lock (``SELECT ... FOR UPDATE`` on heat's ``resource`` table; SQLite, which unit
tests use, locks the whole database for a write instead), so changes of one resource's value
are applied one at a time, each seeing the previous one. Duplicate rows of the key, if any were
left by an earlier release, are merged into one.
"""

import json
from typing import Any, Callable, Optional

from heat.db import api as db_api
from heat.db import models


def update(context: Any, resource_id: int, key: str,
           decide: Callable[[Optional[dict]], Optional[dict]]) -> tuple[Optional[dict], bool]:
    """Replace the JSON object under *key* by ``decide(current)``, atomically.

    *decide* gets the stored object (None when there is none) and returns the new one, or None
    to keep what is stored. Returns the object stored afterwards and whether it was changed.
    """
    with db_api.context_manager.writer.using(context) as session:
        # The resource's row lock serialises every writer of this resource's value.
        (session.query(models.Resource.id).filter_by(id=resource_id)
         .with_for_update().one())
        rows = (session.query(models.ResourceData)
                .filter_by(resource_id=resource_id, key=key)
                .order_by(models.ResourceData.id).all())
        current = decode(rows[0].value) if rows else None
        new = decide(current)
        if new is None:
            return current, False
        row = rows[0] if rows else models.ResourceData(resource_id=resource_id, key=key)
        row.value = json.dumps(new, sort_keys=True)
        row.redact = False
        row.decrypt_method = ''
        session.add(row)
        for extra in rows[1:]:
            session.delete(extra)
        return new, True


def decode(value: Optional[str]) -> Optional[dict]:
    """A stored value as ``update`` reads it: the JSON object, or None for anything else."""
    try:
        decoded = json.loads(value or 'null')
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
