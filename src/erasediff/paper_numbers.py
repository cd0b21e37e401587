"""The paper's printed numbers: the one home that every `report` layout reads (docs/experiments.md).

Each table maps the paper's row label to {column header (as the layout prints it): value}. Where a
number comes from and what is UNCONFIRMED is in docs/experiments.md, the section of each table.
"""

from __future__ import annotations

#: v2 Table 1 (CIFAR10, forget airplane); Finetune, NegGrad, SalUn from the v4 table (UNCONFIRMED)
TABLE1 = {
    "Unscrubbed": {"FID": 9.69, "Precision": 0.392, "Recall": 0.787, "Entropy": 0.037, "P_psi(y=c_f)": 0.972},
    "EraseDiff": {"FID": 7.97, "Precision": 0.43, "Recall": 0.740, "Entropy": 2.017, "P_psi(y=c_f)": 0.216},
    "EraseDiff (D_r = 4.5K GR)": {"FID": 11.74, "Precision": 0.379, "Recall": 0.76, "Entropy": 1.59,
                                  "P_psi(y=c_f)": 0.355},
    "SA": {"FID": 9.08, "Precision": 0.412, "Recall": 0.767, "Entropy": 1.47, "P_psi(y=c_f)": 0.156},
    "Finetune": {"FID": 8.21, "Precision": 0.43, "Recall": 0.77, "P_psi(y=c_f)": 0.96},
    "NegGrad": {"FID": 76.73, "Precision": 0.08, "Recall": 0.61, "P_psi(y=c_f)": 0.61},
    "SalUn": {"FID": 9.16, "Precision": 0.41, "Recall": 0.76, "P_psi(y=c_f)": 0.07},
}

#: v2 Table 2 (one training step, CIFAR10, batch 128)
TABLE2 = {"SA": {"Memory (MiB)": 3352.3, "Time (s)": 9.52}, "EraseDiff": {"Memory (MiB)": 3360.3, "Time (s)": 4.16}}

#: the remaining classes of Table 3 (forget bird = 2 and ship = 8)
TABLE3_REMAIN = (0, 1, 3, 4, 5, 6, 7, 9)


def _table3() -> dict[str, dict[str, float]]:
    """v2 Table 3: FID bird, FID ship, forget-class rate, FID of c0..c9 without 2 and 8, WD."""
    raw = {
        "Unscrubbed": (19.62, 12.05, None, 17.04, 9.67, 19.88, 14.78, 20.56, 17.16, 11.53, 11.44, None),
        "Retrain": (152.39, 139.62, 0.0135, 17.39, 9.57, 20.05, 14.65, 20.19, 17.85, 11.63, 10.85, 0.0),
        "Finetune": (31.64, 21.22, 0.7001, 20.49, 12.38, 23.47, 17.80, 25.51, 18.23, 14.43, 16.09, 1.3616),
        "NegGrad": (322.67, 229.08, 0.4358, 285.25, 290.57, 338.49, 290.23, 312.44, 339.43, 320.63, 278.03, 1.3533),
        "BlindSpot": (349.60, 335.69, 0.1167, 228.92, 181.88, 288.88, 252.42, 242.16, 278.62, 192.67, 195.27, 1.3670),
        "EraseDiff": (256.27, 294.08, 0.0026, 29.61, 22.10, 28.65, 27.68, 35.59, 23.93, 21.24, 24.85, 1.3534),
    }
    headers = ["FID bird", "FID ship", "forget rate", *(f"FID c{c}" for c in TABLE3_REMAIN), "WD"]
    return {row: {h: v for h, v in zip(headers, vals) if v is not None} for row, vals in raw.items()}


TABLE3 = _table3()

#: v2 Table 4 (SD v1.4 Imagenette, forget tench): FID of the remaining classes in the 64-d uint8 variant
TABLE4 = {
    "SD v1.4": {"FID remaining": 4.8883, "tench acc": 0.74},
    "ESD-x": {"FID remaining": 3.0824, "tench acc": 0.00},
    "EraseDiff-x": {"FID remaining": 3.0902, "tench acc": 0.00},
}

#: the columns of appendix Table A in the paper's order: (NudeNet 3.x exposed class, the paper's header)
NUDITY_COLUMNS = (
    ("BUTTOCKS_EXPOSED", "Buttocks"), ("FEMALE_BREAST_EXPOSED", "F-breast"), ("FEMALE_GENITALIA_EXPOSED", "F-genitalia"),
    ("MALE_BREAST_EXPOSED", "M-breast"), ("MALE_GENITALIA_EXPOSED", "M-genitalia"), ("FEET_EXPOSED", "Feet"),
    ("ARMPITS_EXPOSED", "Armpits"), ("BELLY_EXPOSED", "Belly"), ("ANUS_EXPOSED", "Anus"),
)

#: appendix Table A (NudeNet detections at threshold 0.6; which prompt set it is is UNCONFIRMED)
NUDITY_TABLE_A = {row: dict(zip((h for _, h in NUDITY_COLUMNS), counts)) for row, counts in {
    "SD v1.4": (92, 1496, 351, 68, 89, 792, 686, 58, 0),
    "SD v2.1": (79, 830, 85, 209, 283, 532, 668, 1, 0),
    "ESD-u": (1, 5, 0, 0, 0, 4, 2, 0, 0),
    "EraseDiff-u": (0, 0, 0, 0, 1, 0, 1, 0, 0),
}.items()}


#: Robustness (docs/robustness.md "Published numbers"): UnlearnDiffAtk's leaderboard for the nudity-erased
#: models (ASR as a fraction, FID) and the paper's v4 COCO FID / CLIP of the nudity models; UNCONFIRMED
#: whether the leaderboard's ASR is UnlearnDiffAtk's post-attack ASR or pre + post, and which weights it attacked
ROBUSTNESS = {
    "EraseDiff-u · nudity": {"ASR UnlearnDiffAtk": 0.0211, "COCO FID": 17.01, "CLIP": 30.58},
    "ESD-u · nudity": {"COCO FID": 15.76, "CLIP": 30.33},
    "SalUn · nudity": {"ASR UnlearnDiffAtk": 0.1127, "COCO FID": 25.06, "CLIP": 28.91},
}
