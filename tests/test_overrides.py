"""One quoting of an override's value, held to Hydra's own parser."""

import random

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mixtrain.config.overrides import quote_value

TRICKY = ["plain", "it's", "a,b=[c]", "with space", "C:\\dir\\file", "x\\", "end\\\\", "\\'q", "tail\\'", "a\\b'c",
          "{brace}", "", "''", "\\"]


@pytest.mark.parametrize("value", TRICKY)
def test_a_quoted_value_reads_back_as_itself_in_hydras_parser(value):
    parsed = OverridesParser.create().parse_overrides([f"key={quote_value(value)}"])[0]
    assert parsed.value() == value


def test_random_strings_of_the_hard_characters_read_back():
    rng, parser = random.Random(0), OverridesParser.create()
    for _ in range(500):
        value = "".join(rng.choice("ab\\' ,=[]{}:") for _ in range(rng.randint(0, 12)))
        assert parser.parse_overrides([f"k={quote_value(value)}"])[0].value() == value, repr(value)
