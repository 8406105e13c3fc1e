"""FLOPs per sample of the full, unskipped architecture (every head on every pixel).

Counted by ``torch.utils.flop_counter.FlopCounterMode`` over one sample of the networks built on
the ``meta`` device (so it costs nothing): the dense algebra (matmuls, convolutions, attention;
2 FLOPs per multiply-add) of the ViT, Point-MAE and the four heads. The geometry (FPS, k-NN,
interpolation), the transforms and the fusion's box filters are elementwise work and not counted.
Fast paths skip part of this work, so the same number is used for every mode and ratios stay
comparable.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["count_flops"]


def count_flops(config: Any) -> dict[str, int]:
    """FLOPs per sample of the full architecture of ``config`` (a `DetectorConfig`).

    Returns ``{"vit", "point_mae", "map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D", "total"}`` (the
    parts the modality uses). Networks are built on the meta device and run once at batch 1 under
    ``FlopCounterMode``; heads take their plain ``forward`` (every pixel).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .model.heads import build_heads

    cfg = config
    fc, hc = cfg.features, cfg.heads
    n = fc.grid_size * fc.grid_size
    out: dict[str, int] = {}

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    meta = torch.device("meta")
    with torch.device(meta), torch.no_grad():
        if cfg.uses_rgb:
            from .features.vit import build_vit

            vit = build_vit(fc.rgb_size, fc.vit_name)
            rgb = torch.empty(1, 3, fc.rgb_size, fc.rgb_size)
            out["vit"] = count(lambda: vit.forward_features(rgb))
        if cfg.uses_xyz:
            from .features.point_mae import PointMAE

            pm = PointMAE(num_group=fc.num_group, group_size=fc.group_size)
            pm.encoder.split_second_conv = False  # count the architecture, not our shortcut
            nb = torch.empty(1, fc.num_group, fc.group_size, 3)
            ce = torch.empty(1, fc.num_group, 3)
            out["point_mae"] = count(lambda: pm(nb, ce, bn="running"))
        heads = build_heads(cfg.modality, fc.grid_size, hc.dim2d, hc.dim3d, hc.num_heads,
                            hc.window_size)
        t2 = torch.empty(1, n, hc.dim2d)
        t3 = torch.empty(1, n, hc.dim3d)
        inputs = {"map2Dto3D": t2, "map3Dto2D": t3, "Dec2D": t2, "Dec3D": t3}
        for name, head in heads.items():
            head.eval()
            out[name] = count(lambda h=head, x=inputs[name]: h(x))
    out["total"] = sum(out.values())
    return out
