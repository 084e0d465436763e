"""A conversation as the chat front ends keep it: its messages, its system message, and what to drop when it
outgrows the model's context (the oldest turn, never the message just asked)."""

from __future__ import annotations


class Conversation:
    """The messages of one chat, oldest first; the system message (if any) stays first."""

    def __init__(self, system: str | None = None) -> None:
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def reset(self) -> None:
        """Forget every turn; keep the system message."""
        self.messages = [m for m in self.messages if m["role"] == "system"]

    def set_system(self, text: str) -> None:
        """Replace the system message (an empty text removes it)."""
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text.strip():
            self.messages.insert(0, {"role": "system", "content": text.strip()})

    def ask(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def unask(self) -> None:
        """Take back the last question (it was not answered)."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def drop_oldest_turn(self) -> bool:
        """Drop the oldest question and its answer to fit the context; False when only the last question is
        left (it alone is too long)."""
        first = next((i for i, m in enumerate(self.messages) if m["role"] == "user"), None)
        if first is None or sum(m["role"] == "user" for m in self.messages) < 2:
            return False
        end = first + 2 if first + 1 < len(self.messages) and self.messages[first + 1]["role"] == "assistant" \
            else first + 1
        del self.messages[first:end]
        return True


__all__ = ["Conversation"]
