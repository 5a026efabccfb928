"""tools/mutants.py's table stays applicable: each mutant's original text occurs exactly once in its file, and
the edit leaves a Python file that parses (a syntax error fails the collection, which would count as caught).

Running the mutants takes minutes and is done by hand; a refactor that moves a mutated line would
otherwise go unnoticed until then (it did once: the artifact hashing moved to dbunet/manifest.py).
"""

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mutants  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_to_the_current_tree(mutant):
    assert mutants.table_problem(mutant) is None, "update the table"
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{mutant.name}: {test} does not exist"


def test_a_misspelt_mutant_name_is_refused_before_any_run(capsys):
    # before: --only with an unknown name listed the table and exited 2 without a word, or, beside a known name,
    # ran that one and ignored the other
    with pytest.raises(SystemExit) as exc:
        mutants.main(["--only", "cfg_sign", "cfg_sing"])
    assert exc.value.code == 2 and "no mutant named cfg_sing (--list shows the table)" in capsys.readouterr().err


def test_an_edit_that_does_not_parse_is_refused():
    first = mutants.MUTANTS[0]
    assert mutants.table_problem(first) is None
    broken = dataclasses.replace(first, new=first.new + "(")  # an unclosed parenthesis
    assert f"leaves {first.file} unparsable" in mutants.table_problem(broken)
