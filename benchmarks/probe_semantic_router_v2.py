"""WIP (issue 5) probe v2: instruction-head + whole-prompt centroid similarity + keyword share, on the dev set.
The examples were prototyped in /tmp/examples.py and now live in models.yaml (routes.*.examples)."""
import json, re, sys
import numpy as np
sys.path.insert(0, "/tmp")
from examples import EX
from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry
from swarm_edge.sources import ensure_model
from swarm_edge.workers import open_backend
from swarm_edge.router import KeywordRouter
s = Settings.load(threads=2); reg = load_registry(DEFAULT_CONFIG); spec = reg.get("minilm-l6")
b = open_backend(spec, ensure_model(s, spec, reg.base_dir, fetch=False), 2)
tasks = list(EX)
cent = []
for k in tasks:
    E = np.array(b.embed(EX[k])); c = E.mean(0); cent.append(c / np.linalg.norm(c))
cent = np.array(cent)
rows = [json.loads(x) for x in open("tests/data/route_dev.jsonl")]
def head(p):
    m = re.match(r"^(.{8,160}?)[:\n]", p)
    return m.group(1) if m else p
H = np.array(b.embed([head(r["prompt"]) for r in rows])); Q = np.array(b.embed([r["prompt"] for r in rows]))
kw = KeywordRouter(reg)
K = np.array([[ (kw.route(r["prompt"]).scores.get(t, 0.0)) for t in tasks] for r in rows])
for wh in (0.5, 0.6, 0.7):
    for bonus in (0.0, 0.05, 0.1, 0.2):
        M = wh * (H @ cent.T) + (1 - wh) * (Q @ cent.T) + bonus * K
        pred = [tasks[i] for i in M.argmax(1)]
        print(wh, bonus, round(sum(p == r["task"] for p, r in zip(pred, rows)) / len(rows), 3))
M = 0.7 * (H @ cent.T) + 0.3 * (Q @ cent.T) + 0.1 * K
pred = [tasks[i] for i in M.argmax(1)]
for p, r in zip(pred, rows):
    if p != r["task"]:
        print(f"{r['task']:>9} -> {p:<9} {r['prompt'][:90]}")
