import json

import pytest

from evals.styles import RULES, adherence, load_styles, make_rule, parse_styles
from fints_edge.errors import FintsEdgeError

BASE = "The City Opens a New Bridge Downtown."


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({"rule": "lowercase"}, "the city opens a new bridge downtown."),
        ({"rule": "uppercase"}, "THE CITY OPENS A NEW BRIDGE DOWNTOWN."),
        ({"rule": "prefix", "text": "Wow:"}, "Wow: The City Opens a New Bridge Downtown."),
        ({"rule": "suffix", "text": "- J."}, "The City Opens a New Bridge Downtown. - J."),
        ({"rule": "exclaim"}, "The City Opens a New Bridge Downtown!"),
        ({"rule": "terse", "max_words": 3}, "The City Opens"),
        (
            {"rule": "replace", "word": "new", "by": "shiny"},
            "The City Opens a shiny Bridge Downtown.",
        ),
    ],
)
def test_every_rule_transforms_and_its_checker_agrees(spec, want):
    rule = make_rule(spec)
    out = rule.transform(BASE)
    assert out == want
    assert rule.check(out)
    assert not rule.check(BASE)  # the neutral text does not already satisfy it


def test_all_rules_are_covered_by_the_table_above():
    assert set(RULES) == {
        "lowercase",
        "uppercase",
        "prefix",
        "suffix",
        "exclaim",
        "terse",
        "replace",
    }


def test_rules_compose_in_order_and_report_per_rule():
    (style,) = parse_styles(
        {
            "styles": [
                {
                    "name": "fan",
                    "rules": [
                        {"rule": "lowercase"},
                        {"rule": "prefix", "text": "Wow:"},
                        {"rule": "exclaim"},
                    ],
                }
            ]
        }
    )
    out = style.apply(BASE)
    assert out == "Wow: the city opens a new bridge downtown!"
    assert style.checks(out) == {
        "lowercase": False,
        "prefix": True,
        "exclaim": True,
    }  # "Wow" has a capital
    assert adherence(style, [out, BASE]) == 0.0
    assert style.to_json()["rules"][1] == {"rule": "prefix", "text": "Wow:"}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"styles": []}, "expected"),
        (
            {"styles": [{"name": "x", "rules": [{"rule": "shout"}]}]},
            "style 1 \\(x\\): unknown rule 'shout'",
        ),
        (
            {"styles": [{"name": "x", "rules": [{"rule": "prefix"}]}]},
            "takes parameters \\['text'\\]",
        ),
        (
            {"styles": [{"name": "x", "rules": [{"rule": "terse", "max_words": 0}]}]},
            "positive integer",
        ),
        ({"styles": [{"name": "x", "rules": []}]}, "non-empty list"),
        (
            {
                "styles": [
                    {"name": "x", "rules": [{"rule": "lowercase"}]},
                    {"name": "x", "rules": [{"rule": "lowercase"}]},
                ]
            },
            "unique",
        ),
    ],
)
def test_bad_specs_are_refused_with_the_style_named(obj, message):
    with pytest.raises(FintsEdgeError, match=message):
        parse_styles(obj, "spec.json")


def test_load_styles_names_the_file(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(FintsEdgeError, match="spec.json: not valid JSON"):
        load_styles(bad)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"styles": [{"name": "a", "rules": [{"rule": "exclaim"}]}]}))
    assert load_styles(good)[0].name == "a"
