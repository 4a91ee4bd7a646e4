"""scim2-server's read-modify-write, applied again when another write wins the race (RFC 7644 §3.14).

The engine reads a resource, applies the PUT or PATCH to it, and hands the storage the new state with the version
it read; the storage writes only while the row still has that version, or a concurrent write would be silently
overwritten. Losing that race is not the client's failed precondition: RFC 7644 §3.14 answers 412 only to an
If-Match the resource no longer matches. So the request is read and applied again, and the engine checks the
client's If-Match / If-None-Match against each fresh read. Writes to one resource queue in this process (Okta
Group Push and Entra send a group's membership changes in parallel), so only a write from another replica makes
an attempt fail. A DELETE without conditions deletes whatever version it finds: the agent must be deprovisioned.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

from scim2_models import PatchOp, PreconditionFailedException, Resource, ResourceType
from scim2_server.conditions import Conditions
from scim2_server.handler import AsyncScimHandler
from scim2_server.service import ScimService
from scim2_server.storage import AsyncScimStorage

from scim.errors import Busy

#: Attempts of one write before it answers 503: each lost race is a write another replica committed meanwhile.
ATTEMPTS: Final = 5


class RetryingHandler(AsyncScimHandler):
    def __init__(self, service: ScimService, storage: AsyncScimStorage) -> None:
        super().__init__(service, storage)
        #: One lock per resource being written in this process (dropped with its last holder).
        self._writing: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def _turn(self, resource_type: ResourceType, resource_id: str) -> AsyncIterator[None]:
        """This process's turn to write the resource: concurrent requests on it apply one after the other."""
        key = (resource_type.id or "", resource_id)
        lock = self._writing.get(key)
        if lock is None:
            lock = self._writing[key] = asyncio.Lock()
        async with lock:
            yield

    async def replace_resource(
        self,
        resource_type: ResourceType,
        current: Resource[Any],
        replacement: Resource[Any],
        conditions: Conditions,
    ) -> Resource[Any]:
        assert current.id is not None
        # ``replace`` copies read-only attributes into the replacement: each attempt starts from the client's body.
        return await self._rewrite(
            resource_type,
            current.id,
            lambda found: self.service.apply_replacement(found, replacement.model_copy(deep=True), conditions),
            current,
        )

    async def patch_resource(
        self,
        resource_type: ResourceType,
        resource_id: str,
        patch_op: PatchOp[Any],
        conditions: Conditions,
    ) -> Resource[Any]:
        return await self._rewrite(
            resource_type, resource_id, lambda found: self.service.apply_patch(found, patch_op, conditions)
        )

    async def _rewrite(
        self,
        resource_type: ResourceType,
        resource_id: str,
        change: Callable[[Resource[Any]], Resource[Any] | None],
        current: Resource[Any] | None = None,
    ) -> Resource[Any]:
        """Apply ``change`` to the stored resource and store the result if its version is still the one read."""
        async with self._turn(resource_type, resource_id):
            for _ in range(ATTEMPTS):
                found = current if current is not None else await self.storage.get(resource_type, resource_id)
                current = None
                assert found.meta is not None
                version = found.meta.version
                changed = change(found)
                if changed is None:
                    return found
                try:
                    return await self.storage.update(resource_type, changed, expected_version=version)
                except PreconditionFailedException:
                    continue  # another replica wrote it after our read: read it again
        raise _busy(resource_type, resource_id)

    async def delete_resource(self, resource_type: ResourceType, resource_id: str, conditions: Conditions) -> None:
        conditional = conditions.if_match is not None or conditions.if_none_match is not None
        async with self._turn(resource_type, resource_id):
            for _ in range(ATTEMPTS):
                current = await self.storage.get(resource_type, resource_id)
                self.service.check_deletion(current, conditions)
                assert current.meta is not None
                try:
                    await self.storage.delete(
                        resource_type, resource_id, expected_version=current.meta.version if conditional else None
                    )
                    return
                except PreconditionFailedException:
                    continue  # changed after our read: its conditions are checked again on the new version
        raise _busy(resource_type, resource_id)


def _busy(resource_type: ResourceType, resource_id: str) -> Busy:
    return Busy(
        f"the {resource_type.id or 'resource'} {resource_id!r} was changed by {ATTEMPTS} concurrent writes while this "
        "request was being applied; send it again"
    )
