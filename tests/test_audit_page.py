"""The audit page ranks with the learned ranker and the run-edge evidence (AppTest)."""

from __future__ import annotations

from tests.test_pages import AUDIT, env, open_page, texts  # noqa: F401  (env: a fixture)


def test_audit_page_ranks_with_the_learned_ranker(env) -> None:  # noqa: F811
    at = open_page(AUDIT)
    captions = texts(at.caption)
    assert any(c.startswith("Ranked by the learned ranker") for c in captions), captions
    assert not any("hand-weighted" in c for c in captions)
    edge = next(c for c in captions if c.startswith("Ranked by the learned ranker"))
    assert " run-edge cells" in edge
