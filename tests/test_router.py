from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.registry import load_registry
from swarm_edge.router import KeywordRouter


def route(prompt):
    return KeywordRouter(load_registry(DEFAULT_CONFIG)).route(prompt)


def test_keyword_routes_of_the_default_swarm():
    assert route("Write a Python function that reverses a list").task == "code"
    assert route("Translate into German: good morning").task == "translate"
    assert route("Summarize this article in one sentence: ...").task == "summarize"
    assert route("Please rephrase this to sound more polite").task == "rewrite"
    r = route("Please translate into French: where is the train station?")
    assert r.task == "translate" and r.model == "qwen2.5-coder-1.5b"
    assert r.confidence == 1.0 and abs(sum(r.scores.values()) - 1) < 0.01
    mixed = route("Translate this Python code comment into French")  # 2 code hits vs 2 translate hits
    assert mixed.confidence == 0.5 and mixed.scores["code"] == mixed.scores["translate"] == 0.5


def test_no_keyword_falls_back_to_default_task():
    r = route("Tell me something nice")
    assert r.task == "chat" and r.model == "qwen2.5-coder-1.5b" and r.confidence == 0.0
    assert "no task keyword" in r.reason


def test_word_boundaries():
    # "hi" must not fire inside "this" or "which"; "class" must not fire inside "classic"
    r = route("which classic novels should this reader try")
    assert r.scores.get("chat", 0) == 0 and r.scores.get("code", 0) == 0


def test_route_json_shape():
    d = route("hello").to_dict()
    assert set(d) == {"task", "model", "target", "confidence", "reason", "scores"} and d["target"] == "local"
