"""The report's robustness side (paper Fig. 4): which corruption a record stands for, the mean over
severities, and the table/figure built from it."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from occfeat.report import ROW_KEYS
from occfeat.robustness import (CLEAN, corruption_of, robustness_figure, robustness_table, summarize_robustness)


@pytest.mark.parametrize("fields, expected", [
    ({"corruption": "snow", "severity": 2}, ("snow", 2)),
    ({"image_root": "/data/nuScenes-C/MotionBlur/easy"}, ("motion_blur", 1)),
    ({"image_root": "/data/nuScenes-C/CameraCrash/hard/samples"}, ("camera_crash", 3)),
    ({"image_root": "/data/my-copy"}, None),  # images from elsewhere: not a corruption
    ({}, None),  # clean
])
def test_corruption_of_reads_fields_or_nuscenes_c_folders(fields, expected):
    record = SimpleNamespace(**{"corruption": "", "severity": 0, "image_root": "", **fields})  # the fields FinetuneMetrics has
    assert corruption_of(record) == expected


def _frame(rows):
    base = dict(arch="SimpleBEV", backbone="efficientnet_b0", input="224×400", prior="0", marks="§", task="vehicle",
                fraction=1.0, labelled=10)
    return pd.DataFrame([{**base, **r} for r in rows])


def test_each_severity_weighs_the_same_and_seeds_average_after():
    frame = _frame([
        dict(pretraining="None", seed=0, corruption=CLEAN, severity=0, iou=0.30),
        # severity 1 evaluated twice (on the fly and downloaded): averaged first, so it does not outweigh severity 3
        dict(pretraining="None", seed=0, corruption="fog", severity=1, iou=0.20),
        dict(pretraining="None", seed=0, corruption="fog", severity=1, iou=0.10),
        dict(pretraining="None", seed=0, corruption="fog", severity=3, iou=0.05),
        dict(pretraining="None", seed=1, corruption="fog", severity=1, iou=0.25),
        dict(pretraining="None", seed=1, corruption="fog", severity=3, iou=0.15),
        dict(pretraining="Occ+Feat", seed=0, corruption="fog", severity=1, iou=0.4),
        dict(pretraining="Occ+Feat", seed=0, corruption="fog", severity=2, iou=0.3),
        dict(pretraining="Occ+Feat", seed=0, corruption="fog", severity=3, iou=0.2),
        dict(pretraining="Occ+Feat", seed=0, corruption=CLEAN, severity=0, iou=0.5),
    ])
    s = summarize_robustness(frame, ROW_KEYS)
    fog_none = s[(s.pretraining == "None") & (s.corruption == "fog")].iloc[0]
    seed0, seed1 = ((0.20 + 0.10) / 2 + 0.05) / 2, (0.25 + 0.15) / 2
    assert fog_none["mean"] == pytest.approx((seed0 + seed1) / 2)
    assert fog_none["n"] == 2 and fog_none["severities"] == "1,3"
    assert list(s[s.pretraining == "Occ+Feat"].corruption) == [CLEAN, "fog"]  # clean first, Fig. 4's order

    table = robustness_table(s)
    assert list(table.columns) == ["Clean", "Fog"]
    assert table.loc[("SimpleBEV", "efficientnet_b0", "None§", "vehicle 100% (10 labelled)"), "Fog"].endswith("(s1,3)")
    assert table.loc[("SimpleBEV", "efficientnet_b0", "Occ+Feat§", "vehicle 100% (10 labelled)"), "Fog"] == "30.0"
    fig = robustness_figure(s, ["§ synthetic data"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Clean", "Fog"]
    assert len(ax.patches) == 4  # 2 pretrainings x (clean, fog)
