"""The Responses API's stored responses, in an SQLite file: what `previous_response_id`,
`GET /v1/responses/{id}` and `DELETE` read, so they outlive a restart of the server.

Each row holds a response object and the chat conversation up to and including its answer. The
images of those conversations (data URLs, as the client sent them) live once each in their own
table, referenced by digest: an agent's chain of turns repeats every earlier screenshot, which
would otherwise be written again with each turn. The newest `max_entries` responses younger than
`max_age` are kept; older ones, and images no response refers to any more, are deleted on start-up
and with each write.

One connection behind a lock: every call comes from the event loop, each is one short
transaction, and SQLite lets one writer in at a time anyway; the lock keeps a call from any other
thread safe.
"""

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import APIError

log = logging.getLogger("holo_mlx.server")

SCHEMA_VERSION = 1  # PRAGMA user_version of a file this module made
SCHEMA = """
CREATE TABLE responses (
    number INTEGER PRIMARY KEY,  -- grows with each response: the oldest leave first
    id TEXT NOT NULL UNIQUE,
    stored_at REAL NOT NULL,     -- Unix time, for the age bound
    response TEXT NOT NULL,      -- the response object, JSON
    conversation TEXT NOT NULL   -- chat messages, JSON, each image part an IMAGE_REFERENCE part
);
CREATE INDEX responses_stored_at ON responses (stored_at);
CREATE TABLE images (digest TEXT PRIMARY KEY, url TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE response_images (
    response INTEGER NOT NULL REFERENCES responses (number) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (response, digest)
) WITHOUT ROWID;
CREATE INDEX response_images_digest ON response_images (digest);
"""
# The content part that stands for an image in a stored conversation (no chat part has this type).
IMAGE_REFERENCE = "stored_image"
# How long a write waits for another process's write (a second server on the same file) before
# giving up with a 503; calls run on the event loop, so this is also the longest they can stall it.
BUSY_TIMEOUT_S = 1.0


class StoreError(RuntimeError):
    """The store's file cannot be used: said once at start-up, and the server does not start."""


@dataclass
class Stored:
    response: dict
    conversation: list[dict]  # chat messages up to and including this response's answer, instructions aside


class ResponseStore:
    """The stored responses, newest `max_entries` of at most `max_age_s` seconds old, in the SQLite
    file at `path`; with `max_entries` 0 the store is off and `path` is never touched."""

    def __init__(self, path: Path, max_entries: int, max_age_s: float):
        self.path, self.max_entries, self.max_age_s = path, max_entries, max_age_s
        self.lock = threading.Lock()
        self.connection = None if max_entries == 0 else self.open()

    def open(self) -> sqlite3.Connection:
        """The file, created (readable by this user only: it holds conversations and screenshots)
        when missing, checked whole, and trimmed to the bounds; StoreError if any of it fails."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite's -wal and -shm copy its mode
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
            connection.execute("PRAGMA synchronous = NORMAL")  # WAL keeps commits through a crash of the process
            connection.execute("PRAGMA foreign_keys = ON")
            damage = connection.execute("PRAGMA quick_check").fetchone()[0]
            if damage != "ok":
                raise sqlite3.DatabaseError("damaged: " + damage.replace("\n", "; "))  # one line, as errors are said
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables and version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError("a database, but not a response store of this holo-mlx "
                                            f"(schema version {version}, this one writes {SCHEMA_VERSION})")
            connection.execute("BEGIN IMMEDIATE")  # a write lock: an unwritable file fails here or just below
            if not tables:
                for statement in SCHEMA.split(";"):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.trim(connection)
            connection.execute("COMMIT")
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"the response store {self.path} cannot be used: {error} (move or remove it, pass "
                             "another --responses-db PATH, or --responses-store 0 to store nothing)") from None
        return connection

    def put(self, stored: Stored) -> None:
        if self.connection is None:
            return
        conversation, images = referenced(stored.conversation)
        with self.transaction(write=True) as connection:
            number = connection.execute(
                "INSERT INTO responses (id, stored_at, response, conversation) VALUES (?, ?, ?, ?)",
                (stored.response["id"], time.time(), to_json(stored.response), to_json(conversation))).lastrowid
            connection.executemany("INSERT OR IGNORE INTO images (digest, url) VALUES (?, ?)", images.items())
            connection.executemany("INSERT INTO response_images (response, digest) VALUES (?, ?)",
                                   [(number, digest) for digest in images])
            self.trim(connection)

    def get(self, response_id: str, param: str | None = None, status: int = 404) -> Stored:
        if self.connection is not None:
            with self.transaction(write=False) as connection:  # both reads from one snapshot
                row = connection.execute("SELECT number, response, conversation FROM responses "
                                         "WHERE id = ? AND stored_at >= ?", (response_id, self.oldest())).fetchone()
                if row is not None:
                    images = dict(connection.execute(
                        "SELECT digest, url FROM response_images JOIN images USING (digest) WHERE response = ?",
                        (row[0],)))
                    return Stored(json.loads(row[1]), restored(json.loads(row[2]), images))
        raise self.not_found(response_id, param, status)

    def delete(self, response_id: str) -> None:
        if self.connection is not None:
            with self.transaction(write=True) as connection:
                if connection.execute("DELETE FROM responses WHERE id = ? AND stored_at >= ?",
                                      (response_id, self.oldest())).rowcount:
                    forget_unused_images(connection)
                    return
        raise self.not_found(response_id)

    def close(self) -> None:
        if self.connection is not None:
            with self.lock:
                self.connection.close()

    @contextmanager
    def transaction(self, write: bool):
        """The connection, in one transaction under the lock; a failure of SQLite (the file damaged,
        the disk full, another process writing to it for too long) is a 503 for this request alone."""
        connection = self.connection
        with self.lock:
            try:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield connection
                except BaseException:
                    if connection.in_transaction:  # SQLite ends it itself after some failures
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                log.error("the response store %s failed: %s", self.path, error)
                raise APIError(503, f"the response store failed: {error}; only stored responses are affected",
                               code="response_store_unavailable") from None

    def trim(self, connection: sqlite3.Connection) -> None:
        """Delete the responses past either bound, and the images only they held."""
        aged = connection.execute("DELETE FROM responses WHERE stored_at < ?", (self.oldest(),)).rowcount
        surplus = connection.execute(
            "DELETE FROM responses WHERE number <= "
            "(SELECT number FROM responses ORDER BY number DESC LIMIT 1 OFFSET ?)", (self.max_entries,)).rowcount
        if aged or surplus:
            forget_unused_images(connection)

    def oldest(self) -> float:
        """The earliest time a response may have been stored at and still count."""
        return time.time() - self.max_age_s

    def not_found(self, response_id: str, param: str | None = None, status: int = 404) -> APIError:
        kept = "the store is off: --responses-store 0" if self.connection is None else \
            f"kept: the last {self.max_entries} with store: true, for {self.max_age_s / 86400:g} days"
        return APIError(status, f"no stored response with id {response_id!r} ({kept})", param=param,
                        code="response_not_found")


def forget_unused_images(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM images WHERE NOT EXISTS "
                       "(SELECT 1 FROM response_images WHERE response_images.digest = images.digest)")


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def referenced(conversation: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The conversation with each image part's URL replaced by its digest, and the images by digest."""
    images = {}

    def part(content: dict) -> dict:
        if content.get("type") != "image_url":
            return content
        url = content["image_url"]["url"]
        digest = hashlib.sha256(url.encode()).hexdigest()
        images[digest] = url
        return {**content, "type": IMAGE_REFERENCE, "image_url": {**content["image_url"], "url": digest}}

    return [with_parts(message, part) for message in conversation], images


def restored(conversation: list[dict], images: dict[str, str]) -> list[dict]:
    """A stored conversation with its images back in place."""
    def part(content: dict) -> dict:
        if content.get("type") != IMAGE_REFERENCE:
            return content
        url = images[content["image_url"]["url"]]
        return {**content, "type": "image_url", "image_url": {**content["image_url"], "url": url}}

    return [with_parts(message, part) for message in conversation]


def with_parts(message: dict, change) -> dict:
    """A chat message with `change` applied to each of its content parts (a string content has none)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [change(part) for part in content]}
