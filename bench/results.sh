#!/usr/bin/env bash
# Detector results for docs/results.md: the paper's protocol on bottle, and the patch-level detectors at N=10
# (10x augmentation, 5 replicates) on bottle and the elpv solar cells, for the shipped Lite0 and for Lite2.
#   bash bench/results.sh            (about 30-40 minutes on 2 cores; embeddings are cached in build/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${EDGE_DATA_DIR:-../shared/data}
OUT=build/results
mkdir -p "$OUT"
[ -d build/data/elpv_mono ] || $PY -m edge_agent.datasets build/data
[ -d build/calibration ] || $PY -m converter.calibration_set build/calibration
LITE2=build/models/efficientnet-lite2-int8
[ -f $LITE2/manifest.json ] || $PY -m converter.cli --backbone efficientnet-lite2 --calibration build/calibration \
    --spatial-taps 3,4 --output $LITE2 --overwrite
SHIPPED=models/efficientnet-lite0-int8
PATCH="mahalanobis,patch-knn,patch-knn:coreset_ratio=1.0,combined,padim"

evaluate() {  # MODEL SET PRESET NAME [extra args]
    local model=$1 set=$2 preset=$3 name=$4; shift 4
    $PY -m edge_agent.cli --model "$model" evaluate --data "$set" --preset "$preset" --out "$OUT/$name" \
        --cache build/embeddings "$@" > "$OUT/$name.log" 2>&1
    echo "== $name"; cat "$OUT/$name/summary.md"
}

for model in $SHIPPED $LITE2; do
    tag=$(basename $model)
    evaluate $model "$DATA/mvtec_ad_bottle" bottle "patch-bottle-$tag" --sizes 10 --factors 10 --detectors "$PATCH"
    evaluate $model build/data/elpv_mono object "patch-elpv_mono-$tag" --sizes 10 --factors 10 --detectors "$PATCH"
    evaluate $model build/data/elpv_poly object "patch-elpv_poly-$tag" --sizes 10 --factors 10 --detectors "$PATCH"
done
evaluate $SHIPPED "$DATA/mvtec_ad_bottle" bottle "paper-bottle" \
    --detectors mahalanobis,mahalanobis-empirical,knn,padim
$PY -m bench.patch_cost $SHIPPED --train "$DATA/mvtec_ad_bottle/train/good" --images "$DATA/mvtec_ad_bottle/test/good" | tee "$OUT/patch_cost-lite0.txt"
$PY -m bench.patch_cost $LITE2 --train "$DATA/mvtec_ad_bottle/train/good" --images "$DATA/mvtec_ad_bottle/test/good" | tee "$OUT/patch_cost-lite2.txt"
