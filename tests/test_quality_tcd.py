"""benchmarks/quality_tcd.py: the NFE x gamma table, the check of the paper's claims, and a missing run's message."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qt():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("quality_tcd", REPO / "benchmarks" / "quality_tcd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_tcd"] = module
    spec.loader.exec_module(module)
    return module


def _rows(qt, tcd, cd, data="digits"):
    """Rows with TCD's value ``tcd(nfe, gamma)`` and CD's ``cd[nfe]``."""
    rows = [{"data": data, "method": "tcd", "nfe": n, "gamma": g, "value": tcd(n, g)} for n in qt.NFES for g in qt.GAMMAS]
    return rows + [{"data": data, "method": "cd", "nfe": n, "gamma": None, "value": cd[n]} for n in qt.NFES]


def test_table_has_a_row_per_gamma_and_cd(qt):
    rows = _rows(qt, lambda n, g: 10 / n + g, {1: 5.0, 2: 4.0, 4: 4.5, 8: 4.6})
    text = qt.table(rows)
    assert "| TCD, gamma 0.3 | 10.30 | 5.30 | 2.80 | 1.55 |" in text
    assert "| CD multistep | 5.00 | 4.00 | 4.50 | 4.60 |" in text


def test_claims_held_and_not_held(qt):
    held = qt.claims(_rows(qt, lambda n, g: 10 / n + (0 if g == 0.3 else 1), {1: 5.0, 2: 4.0, 4: 4.5, 8: 4.6}))[0]
    assert "keeps improving with NFE: yes" in held and "saturates or worsens: yes" in held
    assert "beats gamma 0 at NFE [1, 2]" in held
    not_held = qt.claims(_rows(qt, lambda n, g: 5 + n + (0 if g == 0 else 1), {1: 5.0, 2: 4.0, 4: 3.0, 8: 2.0}))[0]
    assert "keeps improving with NFE: no" in not_held and "saturates or worsens: no" in not_held
    assert "NFE neither 1 nor 2" in not_held


def test_a_missing_tcd_run_names_the_command(qt, tmp_path):
    with pytest.raises(FileNotFoundError, match="baselines.sh"):
        qt.digits_rows(tmp_path, 0)
