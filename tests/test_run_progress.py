"""The overall progress line of a run (stage i of n, time left) and the progress bars of its quiet stages."""

from __future__ import annotations

import re

import pytest

from vlens.pipeline import (
    STAGE_SHARE,
    STAGES,
    LocateConfig,
    RunConfig,
    ValidateConfig,
    eta_seconds,
    run_pipeline,
    stage_line,
)
from vlens.report import REPORT_SECTIONS


def test_the_time_left_scales_the_finished_stages_by_their_shares():
    assert sum(STAGE_SHARE.values()) == pytest.approx(1.0, abs=0.01) and set(STAGE_SHARE) == set(STAGES)
    assert eta_seconds({}, list(STAGES)) is None  # nothing timed yet
    # locate took 37 s = 3.7% of a run: the run takes 1,000 s, and the other three stages 96.2% of it
    assert eta_seconds({"locate": 37.0}, ["validate", "generate", "report"]) == pytest.approx(962.0)
    # refined once validate is done: (37 + 1,864) s are 96.9% of the run (1,962 s), the rest 3.0% of it
    assert eta_seconds({"locate": 37.0, "validate": 1864.0}, ["generate", "report"]) == pytest.approx(1901.0 / 0.969 * 0.030)
    # a stage to run again (the report of a resumed run) is estimated, not taken as timed
    assert eta_seconds({"locate": 37.0, "report": 500.0}, ["report"]) == pytest.approx(13.0)
    line = stage_line("validate", ["locate", "validate", "generate", "report"], {"locate": 37.0}, 40.0)
    assert line == "[vlens] stage 2/4: validate | 40 s so far | about 16 min left for the run"  # 962 s
    assert "stage 1/2: locate" in stage_line("locate", ["locate", "validate"], {}, 0.0)
    assert "about 2 h 05 min" in stage_line("validate", ["validate"], {"locate": 0.037 * 7500 / 0.932}, 0.0)


def test_a_run_shows_its_stages_and_bars_and_is_quiet_when_asked(tmp_path, tiny_llama, capsys):
    config = RunConfig(LocateConfig(model="tiny-llama", dimensions=["Conservation"], max_pairs=2, selection="top_k:10"),
                       ValidateConfig(kl_targets=[], gammas=[1.0], n_random=2, controls=[], max_dilemmas=1, max_portrait=0,
                                      max_neutral=1, max_questions=1, max_new_tokens=4))  # fmt: skip
    folder = tmp_path / "run"
    run_pipeline(folder, config, model=tiny_llama, stages=("locate",), progress=False)
    err = capsys.readouterr().err
    assert "[vlens] stage" not in err and "locate (question)" not in err  # no line, no bar
    run_pipeline(folder, config, model=tiny_llama, resume=True, progress=True)  # the other three stages
    err = capsys.readouterr().err
    for i, stage in enumerate(STAGES[1:], 1):  # the time left is known from the first run's locate
        assert re.search(rf"\[vlens\] stage {i}/3: {stage} \| [^|]+ so far \| about [^|]+ left for the run\n", err), stage
    # the formerly silent stages show bars: generate per batch (all 4 questions unedited, then 1 per direction),
    # the report per section
    n = len(REPORT_SECTIONS)
    assert re.search(r"generate: 100%.*\| 3/3 ", err) and re.search(rf"report: 100%.*\| {n}/{n} ", err)
