# Shared by the experiment scripts (sourced, not run): run-level settings only, no hyperparameters.
#   PYTHON     interpreter (default: python)       SEED       run seed (default 0)
#   SMOKE=1    tiny configs on CPU                 EXTRA_SET  extra ';'-separated --set items (tests)
PY=${PYTHON:-python}
SEED=${SEED:-0}
IFS=';' read -ra EXTRA <<< "${EXTRA_SET:-}"
SETS=(); for s in "${EXTRA[@]}"; do SETS+=(--set "$s"); done
# a stage is finished when its run wrote metrics.json (or its output file exists): reuse it
done_or() { [ -f "$1/metrics.json" ] || [ -f "$1" ]; }
