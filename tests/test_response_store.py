"""The Responses store on disk (holo_mlx/server/response_store.py) through real servers on
127.0.0.1: stored responses outlive a restart (and a kill), both bounds evict, store: false and
--responses-store 0 write nothing, a file it cannot use stops the start with one line naming it,
and a store that fails while running answers 503 on its routes alone. Tiny checkpoint."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import pytest

from holo_mlx.server.response_store import ResponseStore, Stored
from test_responses import CLICK, data_url
from test_server import CHAT, ROOT, Server, error_of

pytestmark = pytest.mark.server


def serve(checkpoint, db, *args) -> Server:
    return Server("--model", str(checkpoint), "--served-model-name", "holo-tiny", "--responses-db", str(db), *args)


def kill(server: Server) -> None:
    """No shutdown at all: what the store committed must be in the file already."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def count(db, table: str, where: str = "1", *values) -> int:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(f"SELECT count(*) FROM {table} WHERE {where}", values).fetchone()[0]


def status_of(server: Server, response_id: str) -> int:
    return httpx.get(f"{server.url}/v1/responses/{response_id}", timeout=30).status_code


def items_of(response) -> list[dict]:
    """A response's output as input items, to send its conversation whole."""
    return [item.model_dump(exclude_none=True) for item in response.output]


def hi(client, **fields):
    return client.responses.create(model="holo-tiny", input="Hi", max_output_tokens=2, **fields)


# --- across a restart -------------------------------------------------------------------------------------

def test_a_chain_continues_and_a_deletion_holds_after_the_server_is_killed(hf_root_checkpoint, tmp_path):
    db = tmp_path / "responses.sqlite3"
    screen = [{"role": "user", "content": [{"type": "input_image", "image_url": data_url(64, 64)},
                                           {"type": "input_text", "text": "Click it"}]}]
    again = dict(model="holo-tiny", input="Again", tools=[CLICK], max_output_tokens=2)
    before = serve(hf_root_checkpoint, db)
    try:
        client = before.client()
        first = client.responses.create(model="holo-tiny", input=screen, tools=[CLICK], tool_choice="required",
                                        max_output_tokens=80, parallel_tool_calls=False)
        call = next(item for item in first.output if item.type == "function_call")
        clicked = [{"type": "function_call_output", "call_id": call.call_id, "output": "clicked"}]
        second = client.responses.create(model="holo-tiny", previous_response_id=first.id, tools=[CLICK],
                                         max_output_tokens=3, input=clicked)
        deleted = hi(client)
        client.responses.delete(deleted.id)
    finally:
        kill(before)
    after = serve(hf_root_checkpoint, db)
    try:
        client = after.client()
        retrieved = client.responses.retrieve(second.id)
        assert (retrieved.output_text, retrieved.previous_response_id) == (second.output_text, first.id)
        # The whole conversation came back, its screenshot included: the prompt of the chain sent whole.
        third = client.responses.create(previous_response_id=second.id, **again)
        chain = [*screen, *items_of(first), *clicked, *items_of(second), {"role": "user", "content": "Again"}]
        whole = client.responses.create(**{**again, "input": chain}, store=False)
        assert third.usage.input_tokens == whole.usage.input_tokens
        missing = httpx.get(f"{after.url}/v1/responses/{deleted.id}")
        assert missing.status_code == 404 and error_of(missing)["code"] == "response_not_found"
        # The screenshot is kept once, though the three stored responses' conversations all hold it.
        assert count(db, "responses") == 3 and count(db, "images") == 1
    finally:
        after.stop()


def test_32_concurrent_stored_responses_are_all_found_after_a_restart(hf_root_checkpoint, tmp_path):
    db = tmp_path / "responses.sqlite3"
    before = serve(hf_root_checkpoint, db)
    try:
        client = before.client()
        with ThreadPoolExecutor(32) as pool:
            ids = list(pool.map(lambda index: client.responses.create(
                model="holo-tiny", input=f"Hi {index}", max_output_tokens=2).id, range(32)))
    finally:
        before.stop()
    after = serve(hf_root_checkpoint, db)
    try:
        client = after.client()
        assert [client.responses.retrieve(response_id).id for response_id in ids] == ids
    finally:
        after.stop()


# --- bounds, store: false, failures while running: one server kept to 3 responses ---------------------

@pytest.fixture(scope="module")
def bounded(hf_root_checkpoint, module_tmp_factory):
    db = module_tmp_factory("bounded") / "responses.sqlite3"
    running = serve(hf_root_checkpoint, db, "--responses-store", "3")
    running.db = db
    yield running
    running.stop()


def test_a_full_store_evicts_the_oldest_first(bounded):
    client = bounded.client()
    ids = [hi(client).id for _ in range(5)]
    assert [status_of(bounded, response_id) for response_id in ids] == [404, 404, 200, 200, 200]
    assert count(bounded.db, "responses") == 3


def test_responses_older_than_the_age_bound_are_gone(bounded):
    client = bounded.client()
    aged, young = hi(client), hi(client)
    with closing(sqlite3.connect(bounded.db)) as connection, connection:
        connection.execute("UPDATE responses SET stored_at = stored_at - 31 * 86400 WHERE id = ?", (aged.id,))
    assert status_of(bounded, aged.id) == 404 and status_of(bounded, young.id) == 200
    hi(client)  # the next write deletes it from the file (the count bound alone would keep it: 3 newest)
    assert count(bounded.db, "responses", "id = ?", aged.id) == 0


def test_store_false_writes_nothing(bounded):
    client = bounded.client()
    rows, images = count(bounded.db, "responses"), count(bounded.db, "images")
    screen = [{"role": "user", "content": [{"type": "input_image", "image_url": data_url(32, 32)},
                                           {"type": "input_text", "text": "What is this?"}]}]
    unstored = client.responses.create(model="holo-tiny", input=screen, max_output_tokens=2, store=False)
    streamed = [event.response for event in hi(client, store=False, stream=True) if hasattr(event, "response")][-1]
    assert (count(bounded.db, "responses"), count(bounded.db, "images")) == (rows, images)
    assert status_of(bounded, unstored.id) == 404 and status_of(bounded, streamed.id) == 404


def test_a_store_failing_while_running_is_a_503_for_its_routes_alone(bounded):
    client = bounded.client()
    kept = hi(client)
    holder = sqlite3.connect(bounded.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the file's write lock past the busy timeout
    try:
        for response in (bounded.post("/v1/responses", {"input": "Hi", "max_output_tokens": 2}),
                         httpx.delete(f"{bounded.url}/v1/responses/{kept.id}", timeout=30)):
            assert response.status_code == 503
            assert error_of(response)["code"] == "response_store_unavailable", response.text
        assert status_of(bounded, kept.id) == 200  # readers never wait for a writer
        assert bounded.post("/v1/responses", {"input": "Hi", "max_output_tokens": 2, "store": False}).status_code == 200
        chat = bounded.post(CHAT, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert chat.status_code == 200 and httpx.get(f"{bounded.url}/health").status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert bounded.post("/v1/responses", {"input": "Hi", "max_output_tokens": 2}).status_code == 200


# --- start-up --------------------------------------------------------------------------------------------

def test_responses_store_0_never_touches_the_file(hf_root_checkpoint, tmp_path):
    db = tmp_path / "state" / "responses.sqlite3"
    server = serve(hf_root_checkpoint, db, "--responses-store", "0")
    try:
        hi(server.client())
        missing = httpx.get(f"{server.url}/v1/responses/resp_x")
        assert missing.status_code == 404 and "--responses-store 0" in error_of(missing)["message"]
    finally:
        server.stop()
    assert not db.parent.exists()


def unwritable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "responses.sqlite3"  # its folder cannot be made (root may write anywhere else)


def garbage(tmp_path):
    path = tmp_path / "responses.sqlite3"
    path.write_bytes(b"not SQLite at all\n" * 1000)
    return path


def damaged(tmp_path):
    """A store this server wrote, then a page in its middle overwritten."""
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path, 10, 86400)
    for index in range(10):
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{str(index) * 20000}"}}
        store.put(Stored({"id": f"resp_{index}"}, [{"role": "user", "content": [image]}]))
    store.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\xff" * 4096
    path.write_bytes(data)
    return path


def newer(tmp_path):
    """A store of a later schema than this server reads."""
    path = tmp_path / "responses.sqlite3"
    ResponseStore(path, 10, 86400).close()
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA user_version = 2")
    return path


def foreign(tmp_path):
    path = tmp_path / "app.sqlite3"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    return path


@pytest.mark.parametrize("make", [unwritable, garbage, damaged, newer, foreign])
def test_a_file_the_store_cannot_use_stops_the_start_with_one_line_naming_it(hf_root_checkpoint, tmp_path, make):
    path = make(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--model", str(hf_root_checkpoint),
                             "--port", "0", "--responses-db", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1 and "serving" not in result.stdout
    (line,) = result.stderr.splitlines()
    assert re.match(rf"error: the response store {re.escape(str(path))} cannot be used: ", line), line
