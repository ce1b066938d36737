// Schemas of every torch.ops.sam_lightning operator. Kernels are registered per backend
// next to their implementation (e.g. csrc/rle/rle_cpu.cpp); fake (meta) kernels for
// torch.compile and opcheck live in sam_lightning/ops/_fake.py.
#include <torch/library.h>

TORCH_LIBRARY(sam_lightning, m) {
  m.set_python_module("sam_lightning.ops._fake");

  // ---- COCO run-length encoding (RLE) ----
  // A batch of N counts strings is `chars` (uint8, concatenated) plus `offsets` (int64,
  // N + 1); sizes are int64 N x 2 [height, width]. Malformed input raises ValueError.

  // Encodes N x H x W bool/uint8 masks (any strides; nonzero = foreground) to counts strings.
  m.def("rle_encode(Tensor masks) -> (Tensor chars, Tensor offsets)");
  // Decodes N strings of one size h x w into an N x h x w row-major uint8 tensor (0/1).
  m.def("rle_decode(Tensor chars, Tensor offsets, int h, int w) -> Tensor");
  // Foreground pixel count of each RLE: int64 (N,).
  m.def("rle_area(Tensor chars, Tensor offsets, Tensor sizes) -> Tensor");
  // Bounding boxes [x, y, w, h] exactly as pycocotools' toBbox: float64 (N, 4).
  m.def("rle_to_bbox(Tensor chars, Tensor offsets, Tensor sizes) -> Tensor");
  // IoU of every (dt, gt) pair as pycocotools' iou (crowd gt: divide by the dt area):
  // float64 (num_dt, num_gt). iscrowd is bool/uint8 (num_gt,).
  m.def(
      "rle_iou(Tensor dt_chars, Tensor dt_offsets, Tensor dt_sizes, Tensor gt_chars, "
      "Tensor gt_offsets, Tensor gt_sizes, Tensor iscrowd) -> Tensor");
  // Union (or intersection) of N >= 1 RLEs of one size: the merged counts string.
  m.def("rle_merge(Tensor chars, Tensor offsets, Tensor sizes, bool intersect) -> Tensor");
  // Counts (int64, concatenated, `offsets` index them) to counts strings.
  m.def("rle_compress(Tensor counts, Tensor offsets) -> (Tensor chars, Tensor offsets)");
  // Counts strings to counts (int64, concatenated) and their offsets.
  m.def("rle_decompress(Tensor chars, Tensor offsets) -> (Tensor counts, Tensor offsets)");
  // Strings index[0], index[1], ... of a batch (int64 positions, repeats allowed): gathers
  // without decoding.
  m.def("rle_select(Tensor chars, Tensor offsets, Tensor index) -> (Tensor chars, Tensor offsets)");

  // ---- Post-processing of the automatic mask generator ----
  // Results identical to segment_anything.utils.amg, torchvision's CPU NMS and OpenCV's
  // 8-connected labelling; see sam_lightning/ops/postprocess.py. Masks are bool/uint8
  // (nonzero = foreground), any strides; bad inputs raise ValueError.

  // count(logits > t + offset) / count(logits > t - offset) over the last two dims of
  // float32/float64/float16/bfloat16 logits [..., H, W], compared in the logits' dtype:
  // float32 [...], as the official calculate_stability_score (0 / 0 = NaN).
  m.def("stability_score(Tensor logits, float mask_threshold, float threshold_offset) -> Tensor");
  // XYXY boxes (inclusive) of masks [..., H, W]: int64 [..., 4], zeros for empty masks.
  m.def("masks_to_boxes(Tensor masks) -> Tensor");
  // Indices (int64) kept by torchvision's NMS of float32/float64 XYXY boxes (N, 4) and
  // floating scores (N,), in order of decreasing score (stable).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // NMS within each category of int64 idxs (N,): kept indices by decreasing score (stable).
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // 8-connected labels of masks [N, H, W] or [H, W] as OpenCV numbers them: int32 labels of
  // the same shape and int64 label counts (background included) [N] or [].
  m.def("connected_components(Tensor masks) -> (Tensor labels, Tensor num_labels)");
  // The official remove_small_regions on each mask of [N, H, W] or [H, W]; mode "holes" or
  // "islands". Returns bool masks of the same shape and bool `changed` [N] or [].
  m.def(
      "remove_small_regions(Tensor masks, float area_thresh, str mode) -> "
      "(Tensor masks_out, Tensor changed)");

  // ---- Edge detection and the BSDS boundary benchmark ----
  // See sam_lightning/ops/edges.py (semantics, references) and csrc/edges/. Binary maps are
  // bool/uint8 (nonzero = boundary), any strides; bad inputs raise ValueError.

  // scikit-image `thin` (MATLAB bwmorph 'thin' Inf) of masks [N, H, W] or [H, W]: bool.
  m.def("thin(Tensor masks) -> Tensor");
  // Dollar's edgesNmsMex: zeroes float32/float64 edges [H, W] (>= 2 x 2) that are weaker
  // than `multiplier` x the bilinear edge value at distances 1..radius along orientation
  // (radians) either side, then fades the `border` pixels nearest each side.
  m.def(
      "edge_nms(Tensor edges, Tensor orientation, int radius, int border, float multiplier) "
      "-> Tensor");
  // Deterministic maximum matching of boundary pixels of pred [H, W] and gt [H, W] at most
  // max_dist x diagonal apart: int64 [H, W] maps, the matched pixel's row-major index or -1.
  m.def("correspond_pixels(Tensor pred, Tensor gt, float max_dist) -> (Tensor, Tensor)");
  // One image of the BSDS benchmark (edgesEvalImg): for each float64 threshold (K,),
  // edges [H, W] >= max(eps, t), thinned if `thin`, matched against each annotator's
  // ground_truth [A, H, W]: int64 [K, 4] = cntR, sumR, cntP, sumP.
  m.def(
      "boundary_pr_counts(Tensor edges, Tensor ground_truth, Tensor thresholds, float max_dist, "
      "bool thin) -> Tensor");
}
