"""What other clients' servers accept, served the same way here: several served names (vLLM's
--served-model-name a b c, for the names Hcompany's holo CLI sends), vLLM's /tokenize and
/detokenize, OpenAI's nulls where its OpenAPI document allows them, and vLLM's min_p."""

import httpx
import pytest

from test_server import error_of

NAMES = ("holo4-35b-a3b", "holo4-27b", "Hcompany/Holo-3.1-35B-A3B")


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", *NAMES)


# --- several served names ------------------------------------------------------------------------------

def test_every_served_name_is_listed_and_served_and_answers_report_the_first(server):
    client = server.client()
    assert [model.id for model in client.models.list().data] == list(NAMES)
    for name in NAMES:
        assert client.models.retrieve(name).id == name
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.model == NAMES[0]
    assert httpx.get(f"{server.url}/health").json()["model"] == NAMES[0]


def test_a_name_not_served_is_404_listing_the_served_ones(server):
    response = server.post("/v1/chat/completions", {"model": "holo3-35b-a3b", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert all(repr(name) in error["message"] for name in NAMES)
    assert httpx.get(f"{server.url}/v1/models/holo3-35b-a3b").status_code == 404
