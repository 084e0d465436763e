"""A chat's Conversation (no model): the system message, /reset, and which turn goes when the context is full."""

from __future__ import annotations

from swarm_edge.chat import Conversation


def turns(c: Conversation) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in c.messages]


def test_the_system_message_stays_first_and_reset_keeps_it():
    c = Conversation("be brief")
    c.ask("hi")
    c.answered("hello")
    assert turns(c) == [("system", "be brief"), ("user", "hi"), ("assistant", "hello")]
    c.reset()
    assert turns(c) == [("system", "be brief")]


def test_set_system_replaces_it_and_an_empty_text_removes_it():
    c = Conversation()
    c.ask("q")
    c.set_system("  new  ")
    assert turns(c)[0] == ("system", "new")
    c.set_system("")
    assert turns(c) == [("user", "q")]


def test_the_oldest_turn_is_dropped_first_with_its_answer():
    c = Conversation("s")
    for q, a in [("q1", "a1"), ("q2", "a2")]:
        c.ask(q)
        c.answered(a)
    c.ask("q3")
    assert c.drop_oldest_turn() and turns(c) == [("system", "s"), ("user", "q2"), ("assistant", "a2"),
                                                 ("user", "q3")]
    assert c.drop_oldest_turn() and turns(c) == [("system", "s"), ("user", "q3")]
    assert not c.drop_oldest_turn()  # the question alone is too long: nothing left to drop


def test_an_unanswered_question_is_taken_back():
    c = Conversation()
    c.ask("q")
    c.unask()
    c.unask()  # nothing more to take back
    assert c.messages == []
