// CPU kernels of the automatic mask generator's post-processing operators (schemas in
// csrc/ops.cpp): stability_score, masks_to_boxes, nms, batched_nms, connected_components and
// remove_small_regions. Results are identical to the official segment_anything helpers,
// torchvision's CPU NMS and OpenCV's 8-connected labelling (see sam_lightning/ops/postprocess.py
// and the reference implementations in sam_lightning/ops/_postprocess_reference.py, which
// raise the same messages). Work is parallel over masks (over categories for batched_nms).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "postprocess/components.h"

namespace sam_lightning {
namespace {

// Work below which a batch runs on the calling thread: waking the thread pool costs more,
// far more (milliseconds) when other processes keep the cores busy. Pixels for the kernels
// that visit every pixel (~1 ns each); masks_to_boxes usually reads a small part of its
// pixels; NMS does ~0.3 ns per pair of boxes and usually far fewer than size^2 / 2 pairs.
constexpr int64_t kParallelPixels = int64_t{1} << 20;
constexpr int64_t kParallelBoxPixels = int64_t{1} << 24;
constexpr int64_t kParallelBoxPairs = int64_t{1} << 26;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

int64_t grain(int64_t n, int64_t work, int64_t threshold = kParallelPixels) {
  return work < threshold ? std::max<int64_t>(n, 1) : 1;
}

std::string dtype_name(at::ScalarType type) { return std::string(c10::getDtypeNames(type).first); }

void check_cpu(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", arg, " must be a CPU tensor, got ",
                    t.device());
}

void check_mask_dtype(const char* op, const at::Tensor& masks) {
  TORCH_CHECK_VALUE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte, op,
                    ": masks must be a bool or uint8 tensor, got ",
                    dtype_name(masks.scalar_type()));
}

// [..., H, W] as [M, H, W] with contiguous columns (a copy only when needed).
at::Tensor as_batch(const at::Tensor& t) {
  const int64_t h = t.size(-2), w = t.size(-1);
  int64_t m = 1;
  for (int64_t d = 0; d + 2 < t.dim(); ++d) m *= t.size(d);
  at::Tensor batch = t.reshape({m, h, w});
  if (w > 1 && batch.stride(2) != 1) batch = batch.contiguous();
  return batch;
}

std::vector<int64_t> leading_sizes(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - 2);
}

// Checks bool/uint8 H x W or N x H x W masks whose pixels fit int32 labels.
void check_masks(const char* op, const at::Tensor& masks) {
  check_mask_dtype(op, masks);
  TORCH_CHECK_VALUE(masks.dim() == 2 || masks.dim() == 3, op,
                    ": masks must be H x W or N x H x W, got ", masks.dim(), "-D");
  check_cpu(op, "masks", masks);
  const int64_t h = masks.size(-2), w = masks.size(-1);
  TORCH_CHECK_VALUE(h * w <= kInt32Max, op, ": masks must have at most ", kInt32Max,
                    " pixels per mask (int32 labels), got ", h, " x ", w);
}

// ---- stability score --------------------------------------------------------------------

// Orders IEEE half/bfloat16 bit patterns as int16 (-0 just below +0; negative NaNs below
// -inf, positive NaNs above +inf).
inline int16_t ordered(uint16_t bits) {
  const auto s = static_cast<int16_t>(bits);
  return static_cast<int16_t>(s ^ ((s >> 15) & 0x7FFF));
}

// Counts of x > threshold for 16-bit floats, on their bit patterns.
struct Threshold16 {
  int16_t key, max_key;  // x > threshold <=> key < ordered(x) <= max_key
  Threshold16(uint16_t bits, uint16_t inf_bits, bool is_nan) {
    if ((bits & 0x7FFF) == 0) bits = 0;  // x > -0 <=> x > +0
    key = ordered(bits);
    max_key = is_nan ? std::numeric_limits<int16_t>::min() : ordered(inf_bits);
  }
};

template <typename T>
void count_row(const T* p, int64_t w, T hi, T lo, int64_t& high, int64_t& low) {
  int32_t a = 0, b = 0;
  for (int64_t x = 0; x < w; ++x) {
    a += p[x] > hi;
    b += p[x] > lo;
  }
  high = a;
  low = b;
}

void count_row16(const uint16_t* p, int64_t w, Threshold16 hi, Threshold16 lo, int64_t& high,
                 int64_t& low) {
  int32_t a = 0, b = 0;
  for (int64_t x = 0; x < w; ++x) {
    const int16_t k = ordered(p[x]);
    a += (k > hi.key) & (k <= hi.max_key);
    b += (k > lo.key) & (k <= lo.max_key);
  }
  high = a;
  low = b;
}

template <typename Row>
float stability(const Row& row, int64_t h) {
  // As the official: counts per row summed as int16 (wrapping), then as int32.
  int64_t intersection = 0, uni = 0;
  for (int64_t y = 0; y < h; ++y) {
    int64_t high, low;
    row(y, high, low);
    intersection += static_cast<int16_t>(high);
    uni += static_cast<int16_t>(low);
  }
  return static_cast<float>(static_cast<int32_t>(intersection)) /
         static_cast<float>(static_cast<int32_t>(uni));
}

template <typename T>
Threshold16 threshold16(double value) {
  // torch compares a tensor with a Python float in the tensor's dtype: double -> float -> T.
  const T t = static_cast<T>(static_cast<float>(value));
  uint16_t bits;
  std::memcpy(&bits, &t, 2);
  const T inf = std::numeric_limits<T>::infinity();
  uint16_t inf_bits;
  std::memcpy(&inf_bits, &inf, 2);
  return Threshold16(bits, inf_bits, std::isnan(static_cast<float>(t)));
}

at::Tensor stability_score(const at::Tensor& logits, double mask_threshold,
                           double threshold_offset) {
  const char* op = "stability_score";
  const at::ScalarType type = logits.scalar_type();
  TORCH_CHECK_VALUE(type == at::kFloat || type == at::kDouble || type == at::kHalf ||
                        type == at::kBFloat16,
                    op, ": logits must be a float32, float64, float16 or bfloat16 tensor, got ",
                    dtype_name(type));
  TORCH_CHECK_VALUE(logits.dim() >= 2, op,
                    ": logits must have at least 2 dimensions (..., H, W), got ", logits.dim(),
                    "-D");
  check_cpu(op, "logits", logits);
  const int64_t h = logits.size(-2), w = logits.size(-1);
  TORCH_CHECK_VALUE(w <= kInt32Max, op, ": logits rows longer than ", kInt32Max,
                    " are not supported, got W = ", w);
  at::Tensor out = at::empty(leading_sizes(logits), at::kFloat);
  const int64_t m = out.numel();
  if (m == 0) return out;
  const at::Tensor batch = as_batch(logits);
  const int64_t mask_stride = batch.stride(0), row_stride = batch.stride(1);
  const double high = mask_threshold + threshold_offset, low = mask_threshold - threshold_offset;
  float* result = out.data_ptr<float>();
  const auto run = [&](const auto& score_mask) {
    at::parallel_for(0, m, grain(m, m * h * w), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) result[i] = score_mask(i);
    });
  };
  if (type == at::kFloat || type == at::kDouble) {
    AT_DISPATCH_FLOATING_TYPES(type, "stability_score", [&] {
      const auto* base = batch.const_data_ptr<scalar_t>();
      const auto hi = static_cast<scalar_t>(high), lo = static_cast<scalar_t>(low);
      run([&](int64_t i) {
        const scalar_t* mask = base + i * mask_stride;
        return stability(
            [&](int64_t y, int64_t& a, int64_t& b) {
              count_row(mask + y * row_stride, w, hi, lo, a, b);
            },
            h);
      });
    });
  } else {
    const bool half = type == at::kHalf;
    const Threshold16 hi = half ? threshold16<c10::Half>(high) : threshold16<c10::BFloat16>(high);
    const Threshold16 lo = half ? threshold16<c10::Half>(low) : threshold16<c10::BFloat16>(low);
    const auto* base = static_cast<const uint16_t*>(batch.const_data_ptr());
    run([&](int64_t i) {
      const uint16_t* mask = base + i * mask_stride;
      return stability(
          [&](int64_t y, int64_t& a, int64_t& b) {
            count_row16(mask + y * row_stride, w, hi, lo, a, b);
          },
          h);
    });
  }
  return out;
}

// ---- boxes of masks ---------------------------------------------------------------------

bool row_empty(const uint8_t* row, int64_t w) { return cc::find<true>(row, 0, w) >= w; }

// [x0, y0, x1, y1] (inclusive) of the nonzero pixels, or zeros.
void mask_box(const uint8_t* mask, int64_t h, int64_t w, int64_t row_stride, int64_t* box) {
  int64_t top = 0;
  while (top < h && row_empty(mask + top * row_stride, w)) ++top;
  if (top == h) {
    std::fill(box, box + 4, 0);
    return;
  }
  int64_t bottom = h - 1;
  while (row_empty(mask + bottom * row_stride, w)) --bottom;
  int64_t left = w, right = -1;
  for (int64_t y = top; y <= bottom; ++y) {
    const uint8_t* row = mask + y * row_stride;
    left = cc::find<true>(row, 0, left);  // only columns left of the box so far matter
    right = std::max(right, cc::find_last_nonzero(row, right + 1, w));
  }
  box[0] = left;
  box[1] = top;
  box[2] = right;
  box[3] = bottom;
}

at::Tensor masks_to_boxes(const at::Tensor& masks) {
  const char* op = "masks_to_boxes";
  check_mask_dtype(op, masks);
  TORCH_CHECK_VALUE(masks.dim() >= 2, op,
                    ": masks must have at least 2 dimensions (..., H, W), got ", masks.dim(),
                    "-D");
  check_cpu(op, "masks", masks);
  std::vector<int64_t> shape = leading_sizes(masks);
  shape.push_back(4);
  at::Tensor out = at::zeros(shape, at::kLong);
  const int64_t m = out.numel() / 4, h = masks.size(-2), w = masks.size(-1);
  if (m == 0 || h == 0 || w == 0) return out;
  const at::Tensor batch = as_batch(masks);
  const auto* base = static_cast<const uint8_t*>(batch.const_data_ptr());
  const int64_t mask_stride = batch.stride(0), row_stride = batch.stride(1);
  int64_t* boxes = out.data_ptr<int64_t>();
  const int64_t grain_size = grain(m, m * h * w, kParallelBoxPixels);
  at::parallel_for(0, m, grain_size, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      mask_box(base + i * mask_stride, h, w, row_stride, boxes + 4 * i);
    }
  });
  return out;
}

// ---- non-maximum suppression --------------------------------------------------------------

// The boxes of one category, in order of decreasing score (structure of arrays).
template <typename T>
struct Candidates {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int64_t> position;  // in the global score order

  void add(const T* box, int64_t p) {
    x1.push_back(box[0]);
    y1.push_back(box[1]);
    x2.push_back(box[2]);
    y2.push_back(box[3]);
    area.push_back((box[2] - box[0]) * (box[3] - box[1]));
    position.push_back(p);
  }
};

// torchvision's loop: each kept box suppresses the later boxes whose IoU with it is greater
// than the threshold (`Threshold` is float for float boxes: the largest float <= the double
// threshold, which gives the same decisions as comparing in double). Suppressed boxes are
// dropped from the arrays once they are a quarter of the remaining ones. Flags have the
// width of T so that the inner loop vectorises.
template <typename T, typename Threshold>
void suppress(Candidates<T>& c, Threshold threshold, std::vector<int64_t>& kept) {
  using Flag = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  int64_t m = static_cast<int64_t>(c.position.size());
  std::vector<Flag> suppressed(m, 0);
  int64_t dropped = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (suppressed[i]) continue;
    kept.push_back(c.position[i]);
    const T ix1 = c.x1[i], iy1 = c.y1[i], ix2 = c.x2[i], iy2 = c.y2[i], iarea = c.area[i];
    const T* x1 = c.x1.data();
    const T* y1 = c.y1.data();
    const T* x2 = c.x2.data();
    const T* y2 = c.y2.data();
    const T* area = c.area.data();
    Flag* sup = suppressed.data();
    Flag newly = 0;
    for (int64_t j = i + 1; j < m; ++j) {
      // std::max(a, b) is a < b ? b : a, std::min(a, b) is b < a ? b : a (NaN as theirs).
      const T xx1 = ix1 < x1[j] ? x1[j] : ix1;
      const T yy1 = iy1 < y1[j] ? y1[j] : iy1;
      const T xx2 = x2[j] < ix2 ? x2[j] : ix2;
      const T yy2 = y2[j] < iy2 ? y2[j] : iy2;
      const T dw = xx2 - xx1, dh = yy2 - yy1;
      const T inter = (T(0) < dw ? dw : T(0)) * (T(0) < dh ? dh : T(0));
      const T iou = inter / (iarea + area[j] - inter);
      const Flag s = iou > threshold ? 1 : 0;
      newly += s & (sup[j] ^ 1);
      sup[j] |= s;
    }
    dropped += newly;
    if (dropped * 4 > m - i && m - i > 32) {  // compact [i + 1, m)
      int64_t k = i + 1;
      for (int64_t j = i + 1; j < m; ++j) {
        if (sup[j]) continue;
        c.x1[k] = c.x1[j];
        c.y1[k] = c.y1[j];
        c.x2[k] = c.x2[j];
        c.y2[k] = c.y2[j];
        c.area[k] = c.area[j];
        c.position[k] = c.position[j];
        sup[k] = 0;
        ++k;
      }
      m = k;
      dropped = 0;
    }
  }
}

// The largest float <= threshold: for float x, x > it exactly when double(x) > threshold.
float float_threshold(double threshold) {
  const float t = static_cast<float>(threshold);
  if (!(static_cast<double>(t) > threshold)) return t;  // NaN stays NaN: nothing is greater
  return std::nextafter(t, -std::numeric_limits<float>::infinity());
}

void check_boxes(const char* op, const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK_VALUE(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, op,
                    ": boxes must be float32 or float64, got ", dtype_name(boxes.scalar_type()));
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": boxes must have shape (N, 4), got ", boxes.sizes());
  const int64_t n = boxes.size(0);
  TORCH_CHECK_VALUE(at::isFloatingType(scores.scalar_type()), op,
                    ": scores must be a floating-point tensor, got ",
                    dtype_name(scores.scalar_type()));
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == n, op, ": scores must have shape (",
                    n, ",), got ", scores.sizes());
  check_cpu(op, "boxes", boxes);
  check_cpu(op, "scores", scores);
}

// Kept indices by decreasing score (stable); with `idxs`, NMS within each category.
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const int64_t* idxs,
                    double iou_threshold) {
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, at::kLong);
  const at::Tensor order_t = std::get<1>(at::sort(scores, /*stable=*/true, 0, true)).contiguous();
  const int64_t* order = order_t.const_data_ptr<int64_t>();
  // Positions (in score order) grouped by category, ascending within each group.
  std::vector<int64_t> positions(n);
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<int64_t> group_begin{0};
  if (idxs != nullptr) {
    std::stable_sort(positions.begin(), positions.end(), [&](int64_t a, int64_t b) {
      return idxs[order[a]] < idxs[order[b]];
    });
    for (int64_t k = 1; k < n; ++k) {
      if (idxs[order[positions[k]]] != idxs[order[positions[k - 1]]]) group_begin.push_back(k);
    }
  }
  group_begin.push_back(n);
  const int64_t groups = static_cast<int64_t>(group_begin.size()) - 1;
  std::vector<std::vector<int64_t>> kept(groups);
  int64_t work = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t size = group_begin[g + 1] - group_begin[g];
    work += size * size;
  }
  const at::Tensor data = boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms", [&] {
    const scalar_t* b = data.const_data_ptr<scalar_t>();
    const int64_t grain_size = grain(groups, work, kParallelBoxPairs);
    at::parallel_for(0, groups, grain_size, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        Candidates<scalar_t> c;
        for (int64_t k = group_begin[g]; k < group_begin[g + 1]; ++k) {
          c.add(b + 4 * order[positions[k]], positions[k]);
        }
        if constexpr (std::is_same_v<scalar_t, float>) {
          suppress(c, float_threshold(iou_threshold), kept[g]);
        } else {
          suppress(c, iou_threshold, kept[g]);
        }
      }
    });
  });
  std::vector<int64_t> all;
  for (const auto& k : kept) all.insert(all.end(), k.begin(), k.end());
  std::sort(all.begin(), all.end());
  at::Tensor out = at::empty({static_cast<int64_t>(all.size())}, at::kLong);
  int64_t* dst = out.data_ptr<int64_t>();
  for (size_t k = 0; k < all.size(); ++k) dst[k] = order[all[k]];
  return out;
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes("nms", boxes, scores);
  return nms_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold) {
  const char* op = "batched_nms";
  check_boxes(op, boxes, scores);
  const int64_t n = boxes.size(0);
  TORCH_CHECK_VALUE(idxs.scalar_type() == at::kLong, op, ": idxs must be int64, got ",
                    dtype_name(idxs.scalar_type()));
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == n, op, ": idxs must have shape (", n,
                    ",), got ", idxs.sizes());
  check_cpu(op, "idxs", idxs);
  const at::Tensor categories = idxs.contiguous();
  return nms_impl(boxes, scores, categories.const_data_ptr<int64_t>(), iou_threshold);
}

// ---- connected components ------------------------------------------------------------------

// N x H x W masks (an H x W one as 1 x H x W) with contiguous columns.
struct MaskBatch {
  at::Tensor tensor;
  const uint8_t* data;
  int64_t n, h, w, mask_stride, row_stride;

  explicit MaskBatch(const at::Tensor& masks) {
    tensor = masks.dim() == 2 ? masks.unsqueeze(0) : masks;
    if (tensor.size(2) > 1 && tensor.stride(2) != 1) tensor = tensor.contiguous();
    data = static_cast<const uint8_t*>(tensor.const_data_ptr());
    n = tensor.size(0);
    h = tensor.size(1);
    w = tensor.size(2);
    mask_stride = tensor.stride(0);
    row_stride = tensor.stride(1);
  }
  const uint8_t* mask(int64_t i) const { return data + i * mask_stride; }
};

// Writes each row of a labelled mask: `gap` between runs, value(component) on runs.
template <typename Out, typename Value>
void paint(const cc::Components& c, int64_t h, int64_t w, Out gap, const Value& value,
           Out* out) {
  for (int64_t y = 0; y < h; ++y) {
    Out* row = out + y * w;
    int64_t x = 0;
    for (int64_t r = c.row_begin[y]; r < c.row_begin[y + 1]; ++r) {
      std::fill(row + x, row + c.start[r], gap);
      std::fill(row + c.start[r], row + c.end[r], value(c.parent[r]));
      x = c.end[r];
    }
    std::fill(row + x, row + w, gap);
  }
}

std::tuple<at::Tensor, at::Tensor> connected_components(const at::Tensor& masks) {
  check_masks("connected_components", masks);
  const MaskBatch batch(masks);
  const int64_t n = batch.n, h = batch.h, w = batch.w;
  at::Tensor labels = at::empty(masks.sizes(), at::kInt);
  at::Tensor counts = at::empty({n}, at::kLong);
  int32_t* out = labels.data_ptr<int32_t>();
  int64_t* num = counts.data_ptr<int64_t>();
  at::parallel_for(0, n, grain(n, n * h * w), [&](int64_t begin, int64_t end) {
    static thread_local cc::Components c;
    for (int64_t i = begin; i < end; ++i) {
      c.label<true>(batch.mask(i), h, w, batch.row_stride);
      paint(c, h, w, int32_t{0}, [](int32_t k) { return k + 1; }, out + i * h * w);
      num[i] = c.num + 1;
    }
  });
  return {labels, masks.dim() == 2 ? counts.squeeze(0) : counts};
}

// The official remove_small_regions on one mask; returns `changed`.
template <bool Holes>
bool remove_small(const uint8_t* mask, int64_t h, int64_t w, int64_t row_stride,
                  double area_thresh, cc::Components& c, std::vector<uint8_t>& value,
                  uint8_t* out) {
  // Holes: components of the background (the official's `True ^ mask`).
  c.label<!Holes>(mask, h, w, row_stride);
  value.resize(c.num);
  bool changed = false;
  for (int32_t k = 0; k < c.num; ++k) {
    const bool small = static_cast<double>(c.size[k]) < area_thresh;
    changed |= small;
    value[k] = small;  // holes: small background regions become foreground
  }
  uint8_t gap = Holes ? 1 : 0;  // pixels outside the labelled runs
  if (!changed) {
    std::fill(value.begin(), value.end(), Holes ? 0 : 1);  // the mask as it is
  } else if (!Holes) {
    bool any_kept = false;
    for (int32_t k = 0; k < c.num; ++k) {
      value[k] ^= 1;  // keep the regions that are not small
      any_kept |= value[k] != 0;
    }
    if (!any_kept) {  // keep the largest, the lowest label on ties (np.argmax)
      const auto largest = std::max_element(c.size.begin(), c.size.end()) - c.size.begin();
      value[largest] = 1;
    }
  }
  paint(c, h, w, gap, [&](int32_t k) { return value[k]; }, out);
  return changed;
}

std::tuple<at::Tensor, at::Tensor> remove_small_regions(const at::Tensor& masks,
                                                        double area_thresh,
                                                        c10::string_view mode) {
  const char* op = "remove_small_regions";
  const bool holes = mode == "holes";
  TORCH_CHECK_VALUE(holes || mode == "islands", op,
                    ": mode must be 'holes' or 'islands', got '", std::string(mode), "'");
  check_masks(op, masks);
  const MaskBatch batch(masks);
  const int64_t n = batch.n, h = batch.h, w = batch.w;
  at::Tensor result = at::empty(masks.sizes(), at::kBool);
  at::Tensor changed = at::empty({n}, at::kBool);
  auto* out = static_cast<uint8_t*>(result.data_ptr());
  auto* flags = static_cast<bool*>(changed.data_ptr());
  at::parallel_for(0, n, grain(n, n * h * w), [&](int64_t begin, int64_t end) {
    static thread_local cc::Components c;
    static thread_local std::vector<uint8_t> value;
    for (int64_t i = begin; i < end; ++i) {
      const auto run = holes ? remove_small<true> : remove_small<false>;
      flags[i] = run(batch.mask(i), h, w, batch.row_stride, area_thresh, c, value,
                     out + i * h * w);
    }
  });
  return {result, masks.dim() == 2 ? changed.squeeze(0) : changed};
}

}  // namespace

TORCH_LIBRARY_IMPL(sam_lightning, CPU, m) {
  m.impl("stability_score", &stability_score);
  m.impl("masks_to_boxes", &masks_to_boxes);
  m.impl("nms", &nms);
  m.impl("batched_nms", &batched_nms);
  m.impl("connected_components", &connected_components);
  m.impl("remove_small_regions", &remove_small_regions);
}

}  // namespace sam_lightning
