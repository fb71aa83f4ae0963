"""Token ids -> raw bytes -> text, for streaming and logprobs, and how much of a streamed text to
hold back while it could still become a stop string (or a tool call's opening tag).

A byte-level BPE token is a fixed byte string, so streaming text is an incremental UTF-8 decode of
the concatenated token bytes: exact (equal to tokenizer.decode) and cheap per token, with
characters split across tokens held back until complete.
"""

import codecs
from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenBytes:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.decoder = _byte_decoder()
        self.bytes_of = lru_cache(maxsize=1 << 17)(self._bytes_of)

    def _bytes_of(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            # Ids past the tokenizer's vocabulary (the embedding is padded) have no text, as in decode().
            return b""
        if token in self.special or any(c not in self.decoder for c in piece):
            return piece.encode()  # special and added tokens are stored as plain text
        return bytes(self.decoder[c] for c in piece)

    def text(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="replace")


@lru_cache(maxsize=8)
def token_bytes(tokenizer) -> TokenBytes:
    """One shared table per tokenizer."""
    return TokenBytes(tokenizer)


class StreamingDecoder:
    """Text of a growing token sequence, one token at a time."""

    def __init__(self, tokenizer):
        self.bytes_of = token_bytes(tokenizer).bytes_of
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self.decoder.decode(self.bytes_of(token))

    def finish(self) -> str:
        return self.decoder.decode(b"", final=True)


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    return max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if stop.startswith(text[-n:])), default=0)
