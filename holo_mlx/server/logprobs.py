"""Per-token text and raw bytes for OpenAI logprobs."""

from ..tokens import token_bytes
from .protocol import TopLogprob


class TokenStrings:
    def __init__(self, tokenizer):
        self.table = token_bytes(tokenizer)

    def text(self, token: int) -> str:
        return self.table.text(token)

    def top(self, token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=self.text(token), logprob=logprob, bytes=list(self.table.bytes_of(token)))
