"""Label assignment: receptive-field priors, the Ali-TSM, FCOS and ATSS assigners (functions and the
assigner objects a detector is handed), per-point targets; the two-stage model's anchors and its
hierarchical KLD anchor assigner."""

from kldet.assign.alitsm import alitsm_assign, log_stage1_metric, stage2_metric
from kldet.assign.assigners import (
    AliTSMAssigner,
    Assigner,
    ATSSAssigner,
    FCOSAssigner,
    HierarchicalKLDAssigner,
    PointGrid,
    point_grid,
)
from kldet.assign.atss import atss_assign
from kldet.assign.fcos import FCOS_REGRESS_RANGES, fcos_assign
from kldet.assign.hierarchical import hierarchical_kld_assign
from kldet.assign.max_iou import MaxIoUAnchorAssigner
from kldet.assign.priors import (
    THEORETICAL_RECEPTIVE_FIELD,
    feature_sizes,
    points_and_strides,
    receptive_field_priors,
)
from kldet.assign.targets import build_targets

__all__ = [
    "ATSSAssigner",
    "AliTSMAssigner",
    "Assigner",
    "FCOSAssigner",
    "HierarchicalKLDAssigner",
    "MaxIoUAnchorAssigner",
    "PointGrid",
    "FCOS_REGRESS_RANGES",
    "THEORETICAL_RECEPTIVE_FIELD",
    "alitsm_assign",
    "atss_assign",
    "build_targets",
    "fcos_assign",
    "hierarchical_kld_assign",
    "feature_sizes",
    "log_stage1_metric",
    "point_grid",
    "points_and_strides",
    "receptive_field_priors",
    "stage2_metric",
]
