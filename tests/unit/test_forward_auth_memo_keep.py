"""Which forward-auth answers the memo keeps, and what it forgets when full: a bound that one agent asking about
many distinct URIs cannot turn into memory growth, or into everyone's answers forgotten at once."""

from __future__ import annotations

from typing import cast

from gateway.forward_auth_memo import MAX_KEPT_URI, Answer, ForwardAuthMemo, Question

ANSWER = cast(Answer, object())  # keep() stores the answer as it is; what it holds is tested end to end


def question(uri: str, session: str = "s1") -> Question:
    return (session, "GET", uri, "consoles.example.com", "10.0.0.7", None)


def test_a_full_memo_forgets_its_oldest_answer_not_every_agents() -> None:
    memo = ForwardAuthMemo(size=3)
    for n in range(5):
        memo.keep(question(f"/chat/{n}", session=f"s{n}"), ANSWER)
    assert len(memo) == 3
    assert [q[2] for q in memo._answers] == ["/chat/2", "/chat/3", "/chat/4"]


def test_an_answer_to_a_long_uri_is_not_kept() -> None:
    memo = ForwardAuthMemo(size=10)
    memo.keep(question("/chat/?q=" + "x" * MAX_KEPT_URI), ANSWER)
    memo.keep(question("/chat/?q=" + "x" * (MAX_KEPT_URI - len("/chat/?q="))), ANSWER)
    assert [len(q[2]) for q in memo._answers] == [MAX_KEPT_URI]
