"""The router's trained head: multinomial logistic regression on a prompt's features, numpy only.

Fit on the routes' examples (models.yaml and the router's examples file) with L2 regularisation by Adam on the
full batch; then a softmax temperature fitted on a held-out fifth of the examples (by a fixed hash), so that a
confidence of 0.8 is right about 80% of the time; then refit on every example with that temperature.
Deterministic: same examples, same weights.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

LAMBDA = 1e-4      # L2 weight (chosen by 5-fold cross-validation on the dev split's requests)
ITERS = 400
RATE = 0.05
BOW_DIM = 1024     # hashed words and word pairs of the prompt's first BOW_TOKENS tokens
BOW_TOKENS = 12
_TOKEN = re.compile(r"\w+|[?!:]")


def bag_of_words(text: str) -> np.ndarray:
    """Unit vector of hashed unigrams and bigrams of the first BOW_TOKENS tokens: what the request starts with
    ("translate", "fix", "how many", "?") in any language, a signal the sentence embedding blurs."""
    v = np.zeros(BOW_DIM, dtype=np.float32)
    toks = _TOKEN.findall(text.lower())[:BOW_TOKENS]
    for g in toks + [f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)]:
        v[zlib.crc32(g.encode()) % BOW_DIM] += 1.0
    n = float(np.linalg.norm(v))
    return v / n if n else v


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Head:
    """Weights (features x tasks), biases and the softmax temperature."""

    W: np.ndarray
    b: np.ndarray
    temperature: float = 1.0

    def probs(self, x: np.ndarray) -> np.ndarray:
        return _softmax((x @ self.W + self.b) / self.temperature)

    def wire(self) -> dict:
        """The head as a JSON order for the daemon's router worker (float32 -> float -> float32: exact)."""
        return {"W": self.W.tolist(), "b": self.b.tolist(), "temperature": self.temperature}


def features(h: np.ndarray, w: np.ndarray, shares: list[float], keyword_weight: float, text: str) -> np.ndarray:
    """The head's input: the instruction head's and the whole prompt's embeddings, the keyword shares (in the
    head's task order) scaled by keyword_weight, and the hashed first words."""
    kw = np.array(shares, dtype=np.float32) * keyword_weight
    return np.concatenate([h, w, kw, bag_of_words(text)]).astype(np.float32)


# ---------------------------------------------------------------- in the daemon's router worker (router_host.py)

def head_of(wire: dict) -> Head:
    """A head from its order: the cache file the daemon names (`path`, and `temperature` when models.yaml
    overrides it) or its weights (`Head.wire`)."""
    if "path" in wire:
        with np.load(wire["path"]) as data:
            head = Head(data["W"], data["b"], float(data["temperature"]))
        if wire.get("temperature") is not None:
            head.temperature = float(wire["temperature"])
        return head
    return Head(np.asarray(wire["W"], dtype=np.float32), np.asarray(wire["b"], dtype=np.float32),
                float(wire["temperature"]))


def scores(backend, head: Head | None, text: str, prefix_chars: int, shares: list[float],
           keyword_weight: float) -> list[float]:
    """The task probabilities of one prompt, where its embedding is made: the same features and head as the
    in-process router's, so the same numbers."""
    from swarm_edge.errors import InferenceError

    if head is None:
        raise InferenceError("the router's head is not loaded in this worker")
    h, w = backend.embed_with_prefix(text, prefix_chars)
    return [float(p) for p in head.probs(features(h, w, shares, keyword_weight, text))]


def fit(X: np.ndarray, y: np.ndarray, k: int, *, lam: float = LAMBDA, iters: int = ITERS) -> Head:
    """Logistic regression by full-batch Adam (deterministic: zero start, fixed schedule)."""
    n, f = X.shape
    W, b = np.zeros((f, k)), np.zeros(k)
    Y = np.eye(k)[y]
    state = [(np.zeros_like(W), np.zeros_like(W)), (np.zeros_like(b), np.zeros_like(b))]
    for t in range(1, iters + 1):
        G = (_softmax(X @ W + b) - Y) / n
        for p, g, (m, v) in ((W, X.T @ G + lam * W, state[0]), (b, G.sum(axis=0), state[1])):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= RATE * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return Head(W.astype(np.float32), b.astype(np.float32))


def fit_temperature(head: Head, X: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of held-out examples."""
    logits = X @ head.W + head.b
    best, best_t = np.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.05), np.log(5.0), 120)):
        p = _softmax(logits / t)[np.arange(len(y)), y]
        nll = -float(np.mean(np.log(np.maximum(p, 1e-12))))
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


def held_out(text: str) -> bool:
    """A fixed fifth of the examples, by hash: where the temperature is fitted."""
    return hashlib.sha256(("route-head-calibration:" + text).encode()).digest()[0] % 5 == 0


def train(X: np.ndarray, y: np.ndarray, k: int, texts: list[str]) -> Head:
    """Fit on four fifths, fit the temperature on the fifth held out, refit on all with that temperature."""
    hold = np.array([held_out(t) for t in texts])
    if hold.sum() >= k and (~hold).sum() >= k:
        temperature = fit_temperature(fit(X[~hold], y[~hold], k), X[hold], y[hold])
    else:
        temperature = 1.0  # too few examples to hold any out
    head = fit(X, y, k)
    head.temperature = temperature
    return head


def ece(P: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |confidence - accuracy| averaged over equal-width confidence bins."""
    conf, pred = P.max(axis=1), P.argmax(axis=1)
    total = 0.0
    for lo in np.linspace(0, 1, bins, endpoint=False):
        m = (conf > lo) & (conf <= lo + 1.0 / bins)
        if m.any():
            total += m.sum() * abs(float(conf[m].mean()) - float((pred[m] == y[m]).mean()))
    return total / max(1, len(y))
