"""Does unlearning forget? The shipped digits recipes on a small budget, judged as the paper judges (slow).

From one digits base model (the shipped pretraining config) the shipped digit-0
recipes of EraseDiff and SO must push the judge's probability of the forgotten digit (p_f) far below the
unscrubbed model's, while Finetune on the remaining digits alone must not; the remaining digits must stay
recognisable. Marked `slow` (minutes
on 2 cores): `make test-slow` and CI's second step run it.
"""

import pytest
from helpers import REPO

from erasediff.classifier_training import train_eval_classifier
from erasediff.evaluate import evaluate
from erasediff.experiment import load_config
from erasediff.loop import train

pytestmark = pytest.mark.slow
DIGITS = REPO / "DDPM" / "configs" / "digits"
BUDGET = ["device=cpu"]
EVAL = ["evaluate.n_per_class=10", "evaluate.n_forget=40", "evaluate.metrics=[classifier]"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    base = root / "base"
    train(load_config(DIGITS / "pretrain.yaml", BUDGET), base, progress=False)
    clf = root / "classifier"
    train_eval_classifier(load_config(DIGITS / "erasediff.yaml", [*BUDGET, "classifier.epochs=10"]), clf, progress=False)
    runs = {"unscrubbed": base}
    for name in ("erasediff", "so", "finetune"):
        cfg = load_config(DIGITS / f"{name}.yaml", [*BUDGET, f"model.pretrained={base}"])  # the shipped recipe
        train(cfg, root / name, require_pretrained=True, progress=False)
        runs[name] = root / name
    eval_cfg = load_config(DIGITS / "erasediff.yaml", [*BUDGET, *EVAL])
    scores = {name: evaluate(eval_cfg, str(run), classifier_dir=str(clf), progress=False)[0]
              for name, run in runs.items()}
    print({name: (round(m["p_f"], 3), round(m["acc_remain"], 3)) for name, m in scores.items()})
    return scores


def test_erasediff_and_so_forget_and_finetune_does_not(scored):
    base = scored["unscrubbed"]["p_f"]
    assert base > 0.8, scored  # the base model draws the digit: there is something to forget
    for name in ("erasediff", "so"):
        assert scored[name]["p_f"] < base - 0.4, (name, scored)  # far below the unscrubbed model
        assert scored[name]["acc_remain"] > 0.8, (name, scored)  # the other digits survive
    assert scored["finetune"]["p_f"] > base - 0.2, scored  # training on D_r alone does not erase digit 0
