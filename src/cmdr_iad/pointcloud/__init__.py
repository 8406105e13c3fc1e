"""3D-only pipeline for raw industrial scans (paper §3.6, §4.2, Tables 5 and 8).

    scans (PLY/PCD/XYZ/TXT/NPY, point order kept)            scans.py
      → outlier pseudo-labels: IsolationForest / LOF / union   outliers.py
      → sequential chunks of n = s² points, f_k ≥ τ labels,
        90/10 split of normal chunks, per-chunk [-1, 1]        chunking.py, dataset.py
      → s×s pseudo-image → frozen Point-MAE features           features.py
      → Decoder3D(n, 1152), masked cosine loss                 train.py, model.py
      → normalised distance, one 5×5 box pass, √mean norm      scoring.py
      → I-AUROC (chunks), P-AUROC (points), AUPRO, FPS         evaluate.py, table8.py
      → per-point scores of a new scan, coloured PLY           predict.py

Configuration: `config.BuildConfig`, `config.ScanModelConfig`, `config.model_preset`.
CLI: `cmdr-iad pointcloud build|train|evaluate|predict|table8`.
"""
