"""A directory of 10,000 agents, loaded offline with ``slapadd``: read page by page (RFC 2696, the server's
size limit is below the directory's size) and provisioned in one full sync; the server killed in the middle of
the next full read changes nobody."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway.directory import reader
from gateway.directory.errors import DirectoryUnavailable
from tests.components.ldap_server import LdapServer, group_ldif, person_ldif
from tests.components.ldap_stack import LdapStack, ldap_stack

pytestmark = [pytest.mark.timeout(120)]

SIZE = 10_000
PAGE = 500


def large_ldif(size: int) -> str:
    names = [f"agent{i:05}" for i in range(size)]
    people = "\n".join(person_ldif(name) for name in names)
    return people + "\n" + group_ldif("agents", names) + "\n" + group_ldif("chat-agents", names[: size // 2])


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    # The sync account's size limit is one page: an unpaged search of the whole directory would fail.
    with LdapServer(preload=large_ldif(SIZE), size_limit=PAGE) as server:
        yield server


@pytest.fixture
async def stack(directory: LdapServer) -> AsyncIterator[LdapStack]:
    async with ldap_stack(directory, page_size=PAGE, quarantine={"max_share": 0.1, "min_agents": 10}) as built:
        yield built


async def test_ten_thousand_agents_are_provisioned_page_by_page_and_a_read_cut_midway_changes_nobody(
    stack: LdapStack, directory: LdapServer
) -> None:
    started = time.perf_counter()
    report = await stack.sync.full()
    elapsed = time.perf_counter() - started
    print(f"\nfull sync of {SIZE} agents: {elapsed:.1f} s")
    assert report.users_read == SIZE
    assert report.applied["create"] == SIZE
    assert len(await stack.active()) == SIZE
    agent = await stack.agent("agent00001")
    assert await stack.services.groups.names_of(agent.id) == {"agents", "chat-agents"}
    assert elapsed < 30

    pages = 0
    original = reader.paged_search

    def cut_after_two_pages(*args: Any, **kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal pages
        for index, item in enumerate(original(*args, **kwargs)):
            if index and index % PAGE == 0:
                pages += 1
                if pages == 2:
                    directory.kill()  # the server dies with two pages read and eighteen to go
            yield item

    reader.paged_search = cut_after_two_pages
    try:
        with pytest.raises(DirectoryUnavailable, match="nothing was changed"):
            await stack.sync.full()
    finally:
        reader.paged_search = original
    assert pages == 2
    assert len(await stack.active()) == SIZE
    assert await stack.sync.store.quarantines() == []
