"""The same search, resume and export on a real PostgreSQL server (started by .ci/run, whose URL
arrives in AUTOTUNE_TEST_POSTGRES_URL). Outside CI without that variable the test is skipped; in
CI a missing server is a failure, not a skip."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from autotune.search import Search
from kernels import load_tuned
from patterns import build_layout
from search_spaces.space import load_space

from test_search import ROOT, write_space

URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")

if not URL:
    if os.environ.get("CI"):
        pytest.fail("CI must provide a PostgreSQL server in AUTOTUNE_TEST_POSTGRES_URL", pytrace=False)
    pytestmark = pytest.mark.skip(reason="set AUTOTUNE_TEST_POSTGRES_URL to a PostgreSQL database to run")


@pytest.mark.slow
def test_search_resume_and_export_on_postgresql(tmp_path):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    space = load_space(write_space(tmp_path)).override(trials=2)
    first = Search(space, study_name=study, storage=URL, executor="local", progress=False, num_cpus=2).run()
    assert first["completed"] == 2

    # same command, larger budget: the two finished trials are kept, one more is measured
    more = load_space(write_space(tmp_path)).override(trials=3)
    Search(more, study_name=study, storage=URL, executor="local", progress=False, num_cpus=2).run()

    engine = sa.create_engine(URL)
    with engine.connect() as con:
        trials = con.execute(
            sa.text("select number, state from at_trials where study_name = :s order by number"), {"s": study}
        ).all()
        n_meas = con.execute(
            sa.text(
                "select count(*) from at_measurements m join at_trials t on m.trial_id = t.id where t.study_name = :s"
            ),
            {"s": study},
        ).scalar_one()
    engine.dispose()
    # trial 0, then the next proposals that were not duplicates (pruned unmeasured, with their numbers)
    assert len(trials) == 3 and trials[0].number == 0
    assert all(t.state == "COMPLETE" for t in trials)
    assert n_meas == 3 * 2 * 2  # trials x buckets x workloads, nothing measured twice

    out = tmp_path / "tuned.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.export", "--study", study, "--storage", URL, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    tuned = load_tuned(out)
    cfg = tuned.config_for(100)
    assert build_layout(cfg, 100).seq_len == 100
