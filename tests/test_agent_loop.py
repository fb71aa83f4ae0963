"""An agent loop's image budget (holo_mlx.agent.evict_screenshots): the latest screenshots kept, each
older one replaced in place by the text `[screenshot evicted]`, as Hcompany's Holo3 harness does."""

import copy

import pytest

from holo_mlx.agent import EVICTED, MAX_IMAGES_PER_REQUEST, SCREENSHOTS_KEPT, evict_screenshots


def observation(step: int) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": f"<observation step={step}>"},
                                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{step}"}},
                                        {"type": "text", "text": "</observation>"}]}


def loop(steps: int) -> list[dict]:
    """A system turn, then each step's observation and the assistant's action."""
    messages = [{"role": "system", "content": "You are Holo."}]
    for step in range(steps):
        messages += [observation(step), {"role": "assistant", "content": f'{{"action": {step}}}'}]
    return messages


def images(messages: list[dict]) -> list[str]:
    return [part["image_url"]["url"][-1] for message in messages if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"]


def test_the_three_latest_screenshots_stay_and_older_ones_say_they_were_evicted():
    messages = loop(5)
    given = copy.deepcopy(messages)
    kept = evict_screenshots(messages)
    assert SCREENSHOTS_KEPT == 3 and images(kept) == ["2", "3", "4"]
    for step in (0, 1):  # each in its own place, between its observation tags
        assert kept[1 + 2 * step]["content"] == [{"type": "text", "text": f"<observation step={step}>"},
                                                 {"type": "text", "text": EVICTED},
                                                 {"type": "text", "text": "</observation>"}]
    assert EVICTED == "[screenshot evicted]"
    assert [message["role"] for message in kept] == [message["role"] for message in messages]
    assert kept[2:] != messages[2:] and kept[5:] == messages[5:] and messages == given  # the history given stays whole


def test_images_are_counted_from_the_end_within_a_message_too():
    message = {"role": "user", "content": [observation(0)["content"][1], observation(1)["content"][1]]}
    assert images(evict_screenshots([message], keep=1)) == ["1"]
    assert evict_screenshots([message], keep=1)[0]["content"][0] == {"type": "text", "text": EVICTED}


def test_holos_image_part_and_the_responses_apis_are_evicted_as_their_own_text_parts():
    holo = {"role": "user", "content": [{"type": "image", "image": {"b64": "AAAA"}}]}
    responses = {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}
    kept = {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,BBBB"}]}
    assert evict_screenshots([holo, responses, kept], keep=1) == [
        {"role": "user", "content": [{"type": "text", "text": EVICTED}]},
        {"role": "user", "content": [{"type": "input_text", "text": EVICTED}]}, kept]


def test_fewer_screenshots_than_kept_and_text_turns_are_left_alone():
    assert evict_screenshots(loop(3)) == loop(3)
    assert images(evict_screenshots(loop(7), keep=MAX_IMAGES_PER_REQUEST)) == ["2", "3", "4", "5", "6"]
    assert images(evict_screenshots(loop(2), keep=0)) == []


@pytest.mark.parametrize("keep", [-1, MAX_IMAGES_PER_REQUEST + 1])
def test_a_budget_beyond_what_a_request_takes_is_refused(keep):
    with pytest.raises(ValueError, match="keep must be in"):
        evict_screenshots(loop(1), keep=keep)
