"""Per-token text and raw bytes for OpenAI logprobs."""

from ..engine.stream import GenerationChunk
from ..tokens import token_bytes
from .protocol import TokenLogprobEntry, TopLogprob


class TokenStrings:
    def __init__(self, tokenizer):
        self.table = token_bytes(tokenizer)

    def text(self, token: int) -> str:
        return self.table.text(token)

    def top(self, token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=self.text(token), logprob=logprob, bytes=list(self.table.bytes_of(token)))

    def entries(self, chunks: list[GenerationChunk]) -> list[TokenLogprobEntry]:
        """Chat's and the Responses API's logprobs of these tokens, each with its most likely alternatives."""
        return [TokenLogprobEntry(**self.top(chunk.logprob.token, chunk.logprob.logprob).model_dump(),
                                  top_logprobs=[self.top(token, logprob) for token, logprob in chunk.logprob.top])
                for chunk in chunks]
