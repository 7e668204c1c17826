"""Every knob declared once (fints_edge.config): the CLIs and the server's per-request object
derive from the declaration and are checked by the same code."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

import pytest

from fints_edge.config import (
    DEFAULTS,
    REQUEST_KNOBS,
    EngineConfig,
    KnobError,
    add_knob_arguments,
    check_config,
    config_from_args,
    knobs,
    parse_request_knobs,
)
from fints_edge.errors import FintsEdgeError


def test_every_field_is_a_declared_knob_with_help():
    table = knobs()
    assert [f.name for f in fields(EngineConfig)] == list(table)
    assert all(k.help for k, _ in table.values())
    assert REQUEST_KNOBS == ("k", "strength", "rag")


def test_the_chat_and_the_server_take_their_flags_from_the_declaration():
    from fints_edge.chat import build_parser as chat_parser
    from fints_edge.serve.__main__ import build_parser as serve_parser

    for parser in (chat_parser(), serve_parser()):
        actions = {a.dest: a for a in parser._actions}
        for name in ("strength", "k", "rag", "opening_scale", "max_tokens", "threads"):
            k, default = knobs()[name]
            assert k.flag in actions[name].option_strings
            assert k.help in actions[name].help
            assert f"(default: {'off' if default is None else default})" in actions[name].help
    serve = serve_parser().parse_args(["--strength", "0.5", "--rag", "2"])
    chat = chat_parser().parse_args(["--profile", "p.npz", "--strength", "0.5", "--rag", "2"])
    assert (
        config_from_args(serve) == config_from_args(chat) == replace(DEFAULTS, strength=0.5, rag=2)
    )


def test_a_flag_shows_and_falls_back_to_the_base_it_is_given():
    p = argparse.ArgumentParser()
    base = replace(DEFAULTS, k=5)
    add_knob_arguments(p, ["k", "item_norm"], base)
    assert "(default: 5)" in p._option_string_actions["-k"].help
    assert config_from_args(p.parse_args([]), base).k == 5
    assert config_from_args(p.parse_args(["--no-item-norm"]), base).item_norm is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, r"-k/--top-k must be an integer in \[1, 64\], got 0"),
        ({"k": 65}, r"-k/--top-k must be an integer in \[1, 64\], got 65"),
        ({"rag": -1}, r"--rag must be an integer in \[0, 16\], got -1"),
        ({"strength": float("nan")}, "--strength must be a finite number, got nan"),
        ({"mode": "gpu"}, "--mode 'gpu': choose one of cvec, exact"),
        ({"mode": "cvec", "preserve_norm": True}, "--keep-norm acts inside the graph"),
        ({"mode": "cvec", "opening_scale": 0.5}, "--opening-scale acts inside the graph"),
        ({"n_ctx": 32}, "--n-ctx must be an integer >= 64, got 32"),
        ({"sites": ("ffn",)}, "sites .'ffn',.: choose among attn, mlp"),
        ({"k": "3"}, "-k/--top-k must be int, got '3'"),
        ({"item_norm": 1}, "--item-norm must be bool, got 1"),
    ],
)
def test_bounds_and_rules_are_checked_in_one_place(changes, message):
    with pytest.raises(FintsEdgeError, match=message):
        check_config(replace(DEFAULTS, **changes))


def test_the_control_vector_may_keep_the_default_opening_scale():
    """cvec has no positions and ignores openings; only asking for another scale is refused."""
    assert check_config(replace(DEFAULTS, mode="cvec")).opening_scale == 1.0


@pytest.mark.parametrize(
    ("obj", "param", "message"),
    [
        ({"k": 0}, "fints.k", "'fints.k' must be an integer in [1, 64]"),
        ({"k": 2.5}, "fints.k", "'fints.k' must be an integer in [1, 64]"),
        ({"k": True}, "fints.k", "'fints.k' must be an integer in [1, 64]"),
        ({"strength": "a lot"}, "fints.strength", "'fints.strength' must be a number"),
        ({"strength": 1e9}, "fints.strength", "'fints.strength' must be a number in [-100, 100]"),
        ({"rag": 17}, "fints.rag", "'fints.rag' must be an integer in [0, 16]"),
    ],
)
def test_a_requests_knobs_are_checked_by_the_same_declaration(obj, param, message):
    with pytest.raises(KnobError) as e:
        parse_request_knobs(obj, DEFAULTS)
    assert e.value.param == param and str(e.value) == message


def test_a_requests_knobs_go_over_the_servers_defaults_and_nothing_else():
    base = replace(DEFAULTS, k=5, max_tokens=9)
    got = parse_request_knobs({"strength": 1, "rag": 2, "max_tokens": 1000}, base)
    assert (got.k, got.strength, got.rag, got.max_tokens) == (5, 1.0, 2, 9)
    assert isinstance(got.strength, float)


def test_a_graph_only_flag_given_with_the_control_vector_is_refused_even_at_its_default():
    from fints_edge.chat import build_parser

    args = build_parser().parse_args(["--profile", "p", "--mode", "cvec", "--opening-scale", "1"])
    with pytest.raises(FintsEdgeError, match="--opening-scale acts inside the graph"):
        config_from_args(args)
    quiet = build_parser().parse_args(["--profile", "p", "--mode", "cvec"])
    assert config_from_args(quiet).mode == "cvec"
