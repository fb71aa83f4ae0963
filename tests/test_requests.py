"""Request features on a server with a small context (--max-model-len), through the real openai client:
the Responses API's truncation "auto"; random weights."""

import base64
import io

import openai
import pytest

from holo_mlx.testing import synthetic_screenshot

CONTEXT = 600


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny",
                         "--max-model-len", str(CONTEXT))


def data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    synthetic_screenshot(width, height).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def screenshot_turn(width: int) -> dict:
    """A user message with one screenshot (about 80 tokens), told apart by its width."""
    return {"role": "user", "content": [{"type": "input_image", "image_url": data_url(width, 200)},
                                        {"type": "input_text", "text": "What changed?"}]}


def holo(response) -> dict:
    return response.model_extra["holo"]


# --- truncation "auto" -------------------------------------------------------------------------------

def test_truncation_auto_changes_nothing_when_the_conversation_fits(client):
    kwargs = dict(model="holo-tiny", input=[screenshot_turn(300)], instructions="Be brief.", temperature=0,
                  max_output_tokens=8, store=False)
    disabled = client.responses.create(**kwargs)
    auto = client.responses.create(**kwargs, truncation="auto")
    assert auto.truncation == "auto" and disabled.truncation == "disabled"
    assert auto.usage.input_tokens == disabled.usage.input_tokens and auto.output_text == disabled.output_text
    assert holo(auto)["truncation"] == {"dropped_messages": 0, "dropped_images": 0}
    assert "truncation" not in holo(disabled)


def test_truncation_auto_drops_the_oldest_screenshots_of_a_chain_until_it_fits(client):
    first = client.responses.create(model="holo-tiny", input=[screenshot_turn(300 + 10 * i) for i in range(3)],
                                    max_output_tokens=2)
    later = [screenshot_turn(400 + 10 * i) for i in range(3)]
    kwargs = dict(model="holo-tiny", previous_response_id=first.id, input=later, instructions="Be brief.",
                  max_output_tokens=100)
    with pytest.raises(openai.BadRequestError) as refused:  # truncation "disabled", the default
        client.responses.create(**kwargs)
    assert refused.value.code == "context_length_exceeded"
    response = client.responses.create(**kwargs, truncation="auto")
    assert response.status in ("completed", "incomplete") and response.truncation == "auto"
    assert response.usage.input_tokens + 100 <= CONTEXT
    dropped = holo(response)["truncation"]
    assert dropped["dropped_images"] >= 1 and dropped["dropped_messages"] >= dropped["dropped_images"]
    # The oldest went first: the screenshots left are the newest ones, in order.
    widths = [image["original"]["width"] for image in holo(response)["images"]]
    assert widths == [300, 310, 320, 400, 410, 420][dropped["dropped_images"]:]
    # The stored conversation is the one answered: its next turn starts from it.
    after = client.responses.create(model="holo-tiny", previous_response_id=response.id, input="And now?",
                                    max_output_tokens=2, truncation="auto")
    assert [image["original"]["width"] for image in holo(after)["images"]] == widths


def test_truncation_auto_drops_old_text_and_keeps_the_instructions_and_last_turn(client):
    story = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    turns = [{"role": role, "content": f"{index}: {story}"}
             for index, role in enumerate(["user", "assistant"] * 3)] + [{"role": "user", "content": "Sum up."}]
    response = client.responses.create(model="holo-tiny", input=turns, instructions="Answer in one word.",
                                       max_output_tokens=50, truncation="auto", store=False)
    dropped = holo(response)["truncation"]
    assert dropped["dropped_messages"] >= 1 and dropped["dropped_images"] == 0
    assert response.usage.input_tokens + 50 <= CONTEXT


def test_truncation_auto_cannot_drop_the_last_user_turn(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="holo-tiny", input="word " * CONTEXT, max_output_tokens=5, truncation="auto")
    assert refused.value.code == "context_length_exceeded"
