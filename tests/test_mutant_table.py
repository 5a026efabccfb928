"""tools/mutants.py's table stays applicable: each mutant's original text occurs exactly once in its file.

Running the mutants takes minutes and is done by hand; a refactor that moves a mutated line would
otherwise go unnoticed until then (it did once: the artifact hashing moved to dbunet/manifest.py).
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mutants  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_to_the_current_tree(mutant):
    assert (ROOT / mutant.file).read_text().count(mutant.old) == 1, f"{mutant.name}: update the table"
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{mutant.name}: {test} does not exist"


def test_a_misspelt_mutant_name_is_refused_before_any_run(capsys):
    # before: --only with an unknown name listed the table and exited 2 without a word, or, beside a known name,
    # ran that one and ignored the other
    with pytest.raises(SystemExit) as exc:
        mutants.main(["--only", "cfg_sign", "cfg_sing"])
    assert exc.value.code == 2 and "no mutant named cfg_sing (--list shows the table)" in capsys.readouterr().err
