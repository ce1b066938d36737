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
}
