"""WIP (issue 5) probe, not a finished benchmark: minilm-l6 similarity between the dev set (tests/data/route_dev.jsonl)
and 8 hand-written examples per task. Rerun: .venv/bin/python benchmarks/probe_semantic_router.py"""
import json
import time
from collections import Counter, defaultdict

import numpy as np

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry
from swarm_edge.sources import ensure_model
from swarm_edge.workers import open_backend

EX = {
 "chat": ["hi, how are you?", "let's just talk", "what's new with you", "tell me a joke", "I feel sad today", "good evening!", "what do you like to do for fun", "thank you so much"],
 "summarize": ["summarize this text", "give me a short summary of the following", "what is the main point of this passage", "tl;dr of this article", "condense this report into a few sentences", "key takeaways from these meeting notes", "brief overview of this document", "one-line summary of the story"],
 "extract": ["extract the names from this text", "list all dates in the document", "find the email address in this message", "pull out the prices and product names", "what is the order number in this email", "get the address from the form", "return the fields as JSON", "which locations are mentioned"],
 "classify": ["is this review positive or negative", "classify this ticket into a category", "label the sentiment", "is this message spam", "which topic does this headline belong to", "tag the intent of this query", "is this urgent or not", "assign one of these labels to the text"],
 "translate": ["translate this into French", "how do you say this in Spanish", "what does this German sentence mean in English", "translate to Japanese", "give me the Italian translation", "convert this text to Portuguese", "say it in Dutch", "English translation please"],
 "code": ["write a python function", "fix this bug in my code", "write a SQL query", "explain this javascript snippet", "implement a sorting algorithm in C++", "why does my program throw an exception", "write a bash script", "create a REST API endpoint"],
 "math": ["what is 12 times 7", "solve this equation for x", "calculate the percentage", "what is the derivative of this function", "compute the area of a triangle", "how much interest after five years", "what's the probability of", "find the average of these numbers"],
 "rewrite": ["rewrite this more formally", "paraphrase this sentence", "fix the grammar", "make this sound more polite", "simplify this paragraph", "change the tone of this email", "make this shorter and clearer", "reword this headline"],
}
s = Settings.load(threads=2); reg = load_registry(DEFAULT_CONFIG); spec = reg.get("minilm-l6")
b = open_backend(spec, ensure_model(s, spec, reg.base_dir, fetch=False), 2)
tasks = list(EX)
ex_texts = [t for k in tasks for t in EX[k]]; ex_labels = [k for k in tasks for _ in EX[k]]
E = np.array(b.embed(ex_texts))
rows = [json.loads(l) for l in open("tests/data/route_dev.jsonl")]
t0 = time.perf_counter(); Q = np.array(b.embed([r["prompt"] for r in rows])); dt = time.perf_counter() - t0
S = Q @ E.T
cent = np.array([E[[i for i, l in enumerate(ex_labels) if l == k]].mean(0) for k in tasks]); cent /= np.linalg.norm(cent, axis=1, keepdims=True)
def acc(pred): return sum(p == r["task"] for p, r in zip(pred, rows)) / len(rows)
nn = [ex_labels[i] for i in S.argmax(1)]
cen = [tasks[i] for i in (Q @ cent.T).argmax(1)]
k3 = []
for row in S:
    sc = defaultdict(float)
    for i in row.argsort()[-3:]: sc[ex_labels[i]] += row[i]
    k3.append(max(sc, key=sc.get))
print(f"1-NN {acc(nn):.3f}  centroid {acc(cen):.3f}  3-NN {acc(k3):.3f}   embed {dt/len(rows)*1000:.1f} ms/prompt (batched)")
conf = defaultdict(Counter)
for p, r in zip(cen, rows): conf[r["task"]][p] += 1
for t, c in conf.items(): print(t, dict(c))
import re


def head(p):
    m = re.match(r"^(.{8,160}?)[:\n]", p)
    return m.group(1) if m else p
H = np.array(b.embed([head(r["prompt"]) for r in rows]))
mix = 0.6 * (H @ cent.T) + 0.4 * (Q @ cent.T)
for name, M in [("head centroid", H @ cent.T), ("mix", mix)]:
    pred = [tasks[i] for i in M.argmax(1)]
    print(name, f"{acc(pred):.3f}")
pred = [tasks[i] for i in mix.argmax(1)]
conf = defaultdict(Counter)
for p, r in zip(pred, rows): conf[r["task"]][p] += 1
for t, c in conf.items(): print(t, dict(c))
