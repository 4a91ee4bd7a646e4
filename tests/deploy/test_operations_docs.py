"""The operations documents and deploy/ point at each other: every link and every ``docs/...`` path they name exists,
and every deploy/ file the documents name is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, ROOT

DOCS = [*sorted((ROOT / "docs" / "operations").glob("*.md")), ROOT / "docs" / "operations.md"]
#: The deployment samples of issue 8 (the forward-auth sample and the demo are documented elsewhere).
SAMPLES = ("container", "kubernetes", "compose", "systemd", "envoy", "nginx/channelgate-front.conf")
DEPLOY_TEXTS = sorted(
    path
    for sample in SAMPLES
    for path in ([DEPLOY / sample] if (DEPLOY / sample).is_file() else (DEPLOY / sample).rglob("*"))
    if path.is_file()
)


@pytest.mark.parametrize("document", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_deploy_path_in_the_operations_docs_exists(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (document.parent / target).exists(), f"{document.name} links to {target}"
    for path in set(re.findall(r"`(deploy/[\w./@-]+)`", text)):
        assert (ROOT / path.rstrip("/")).exists(), f"{document.name} names {path}"


@pytest.mark.parametrize("source", DEPLOY_TEXTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_document_a_deploy_file_names_exists(source: Path) -> None:
    for path in set(re.findall(r"\b(docs/[\w./-]+\.md)", source.read_text(encoding="utf-8"))):
        assert (ROOT / path).exists(), f"{source.name} names {path}"
