"""The server's options, declared once (holo_mlx/settings.py): every flag has its environment variable,
checks and units, and docs/API.md lists them as the code has them."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from holo_mlx.settings import ServerConfig, build_parser, env_names, flag, parse_config

DOCS = Path(__file__).resolve().parent.parent / "docs" / "API.md"
OPTIONS = fields(ServerConfig)

# A value to give each kind of option, and what it must parse to.
SAMPLES = {"int": ("7", 7), "float": ("1.5", 1.5), "str": ("x", "x"), "names": ("a, b,", ("a", "b")),
           "model_names": ("a, b c", ("a", "b", "c")),
           "switch": ("1", True), "seconds": ("1.5", 1.5), "days": ("0.5", 0.5)}


def sample(option) -> tuple[str, object]:
    return SAMPLES[option.metadata["parse"].__name__]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_every_option_has_a_flag_and_an_environment_variable_that_is_honoured(option):
    assert flag(option) in build_parser({})._option_string_actions
    env = env_names(option)[0]
    assert env == "HOLO_" + option.name.upper()
    text, value = sample(option)
    assert getattr(parse_config([], {env: text}), option.name) == value


def test_defaults_are_the_declared_ones_and_the_flag_wins_over_the_environment():
    assert parse_config([], {}) == ServerConfig()
    config = parse_config(["--max-num-seqs", "3", "--enable-docs"], {"HOLO_MAX_NUM_SEQS": "5",
                                                                    "HOLO_ENABLE_DOCS": "0"})
    assert config.max_num_seqs == 3 and config.enable_docs
    assert parse_config([], {"HOLO_MAX_NUM_SEQS": ""}).max_num_seqs == 8  # empty: unset


def test_several_served_names_come_as_flag_values_or_a_list_in_the_variable_the_first_reported():
    config = parse_config(["--model", "models/x-mlx/", "--served-model-name", "holo4-35b-a3b", "holo4-27b"],
                          {"HOLO_SERVED_MODEL_NAME": "other"})
    assert config.model_names == ("holo4-35b-a3b", "holo4-27b") and config.model_name == "holo4-35b-a3b"
    environ = {"HOLO_SERVED_MODEL_NAME": "holo3-1-35b-a3b, Hcompany/Holo-3.1-35B-A3B holo4-27b"}
    assert parse_config([], environ).model_names == ("holo3-1-35b-a3b", "Hcompany/Holo-3.1-35B-A3B", "holo4-27b")
    assert parse_config(["--model", "models/x-mlx/"], {}).model_names == ("x-mlx",)  # unset: the folder's name


def test_the_documented_host_and_port_variables_still_work():
    assert parse_config([], {"HOST": "0.0.0.0", "PORT": "9000"}).host == "0.0.0.0"
    assert parse_config([], {"PORT": "9000"}).port == 9000
    assert parse_config([], {"HOLO_HOST": "::1", "HOST": "0.0.0.0"}).host == "::1"


@pytest.mark.parametrize("argv, environ, message", [
    (["--max-queue", "0"], {}, "argument --max-queue: must be at least 1, got 0"),
    (["--max-model-len", "1"], {}, "argument --max-model-len: must be at least 2, got 1"),
    (["--max-side", "wide"], {}, "argument --max-side: invalid int value: 'wide'"),
    ([], {"HOLO_PREFIX_CACHE_MB": "-1"}, "HOLO_PREFIX_CACHE_MB='-1': must be at least 0, got -1"),
    ([], {"HOLO_MAX_IMAGE_MB": "big"}, "HOLO_MAX_IMAGE_MB='big': not a valid float"),
    ([], {"HOLO_ENABLE_DOCS": "sure"}, "HOLO_ENABLE_DOCS='sure': must be 1/0, true/false, yes/no or on/off"),
    (["--rank-timeout", "0"], {}, "argument --rank-timeout: must be a positive number of seconds, got 0"),
    (["--join-timeout", "soon"], {}, "argument --join-timeout: invalid seconds value: 'soon'"),
    ([], {"HOLO_RESPONSES_MAX_AGE_DAYS": "0"}, "HOLO_RESPONSES_MAX_AGE_DAYS='0': must be a positive number of days"),
])
def test_bad_values_exit_naming_the_flag_or_the_variable(argv, environ, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv, environ)
    assert message in capsys.readouterr().err


def test_zero_disables_the_resize_limits_unset_leaves_the_familys_and_sizes_are_mib():
    config = parse_config(["--max-side", "0", "--max-pixels", "0", "--max-request-mb", "0.5",
                           "--prefix-cache-mb", "3"], {})
    assert config.resize == {"max_side": None, "max_pixels": None}
    assert ServerConfig().resize == {}  # the prompt builder takes the family's (models/base.py)
    assert parse_config(["--max-side", "1000"], {}).resize == {"max_side": 1000}
    assert config.max_request_bytes == 2**19 and config.prefix_cache_bytes == 3 * 2**20
    assert ServerConfig().max_image_bytes == 20 * 2**20 and ServerConfig().vision_cache_bytes == 256 * 2**20


def documented_options() -> dict[str, tuple[str, str]]:
    """docs/API.md's options table: flag -> (its first cell, its env cell)."""
    section = DOCS.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(--[a-z-]+)([^`]*)` \| ([^|]*) \|", section, re.MULTILINE)
    return {name: (name + rest, env.strip()) for name, rest, env in rows}


def test_the_docs_list_every_option_as_the_code_has_it():
    documented = documented_options()
    assert set(documented) == {flag(option) for option in OPTIONS}
    for option in OPTIONS:
        metavar = option.metadata["metavar"]
        usage = flag(option) if isinstance(option.default, bool) else f"{flag(option)} {metavar}" + (
            f" [{metavar} ...]" if option.metadata["several"] else "")
        assert documented[flag(option)] == (usage, " or ".join(f"`{env}`" for env in env_names(option)))
