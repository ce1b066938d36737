// CPU kernels of the edge-detection operators (schemas in csrc/ops.cpp): thin (scikit-image
// `thin` = MATLAB bwmorph 'thin' Inf), edge_nms (Dollar's edges toolbox edgesNmsMex),
// correspond_pixels (deterministic maximum matching of boundary pixels, see matching.h) and
// boundary_pr_counts (one image of the BSDS benchmark / edgesEvalImg: threshold, thin,
// match against every annotator, count). Python references with the same results and
// messages: sam_lightning/ops/_edges_reference.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "edges/matching.h"
#include "edges/thinning.h"

namespace sam_lightning {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// Work (pixels) below which a batch runs on the calling thread.
constexpr int64_t kParallelPixels = int64_t{1} << 20;
// MATLAB's eps: edgesEvalImg thresholds at max(eps, threshold).
constexpr double kEps = std::numeric_limits<double>::epsilon();

std::string dtype_name(at::ScalarType type) { return std::string(c10::getDtypeNames(type).first); }

void check_cpu(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", arg, " must be a CPU tensor, got ",
                    t.device());
}

void check_binary(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kBool || t.scalar_type() == at::kByte, op, ": ", arg,
                    " must be a bool or uint8 tensor, got ", dtype_name(t.scalar_type()));
  check_cpu(op, arg, t);
}

void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                    arg, " must be a float32 or float64 tensor, got ",
                    dtype_name(t.scalar_type()));
  check_cpu(op, arg, t);
}

void check_finite(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.numel() == 0 || at::isfinite(t).all().item<bool>(), op, ": ", arg,
                    " must hold finite values");
}

void check_pixels(const char* op, const char* arg, int64_t h, int64_t w) {
  TORCH_CHECK_VALUE(h * w <= kInt32Max, op, ": ", arg, " must have at most ", kInt32Max,
                    " pixels, got ", h, " x ", w);
}

// Nonzero pixels of a 0/1 view as 0/1 bytes in the interior of a (h + 2) x (w + 2) frame.
void load_padded(const uint8_t* src, int64_t row_stride, int64_t h, int64_t w,
                 std::vector<uint8_t>& padded) {
  padded.assign(static_cast<size_t>((h + 2) * (w + 2)), 0);
  for (int64_t y = 0; y < h; ++y) {
    uint8_t* row = padded.data() + (y + 1) * (w + 2) + 1;
    for (int64_t x = 0; x < w; ++x) row[x] = src[y * row_stride + x] != 0;
  }
}

// ---- thinning ---------------------------------------------------------------------------

at::Tensor thin(const at::Tensor& masks) {
  const char* op = "thin";
  check_binary(op, "masks", masks);
  TORCH_CHECK_VALUE(masks.dim() == 2 || masks.dim() == 3, op,
                    ": masks must be H x W or N x H x W, got ", masks.dim(), "-D");
  const int64_t h = masks.size(-2), w = masks.size(-1);
  check_pixels(op, "masks", h + 2, w + 2);
  const int64_t n = masks.dim() == 3 ? masks.size(0) : 1;
  const at::Tensor batch = masks.reshape({n, h, w}).contiguous();
  at::Tensor out = at::zeros(batch.sizes(), at::kBool);
  if (n == 0 || h == 0 || w == 0) return out.reshape(masks.sizes());
  const auto* src = static_cast<const uint8_t*>(batch.const_data_ptr());
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  const int64_t grain = n * h * w < kParallelPixels ? n : 1;
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> padded;
    edges::ThinningScratch scratch;
    for (int64_t i = begin; i < end; ++i) {
      load_padded(src + i * h * w, w, h, w, padded);
      edges::thin_padded(padded.data(), h, w, scratch);
      for (int64_t y = 0; y < h; ++y) {
        std::copy_n(padded.data() + (y + 1) * (w + 2) + 1, w, dst + (i * h + y) * w);
      }
    }
  });
  return out.reshape(masks.sizes());
}

// ---- edge NMS ---------------------------------------------------------------------------

// E at (x, y) by bilinear interpolation, coordinates clamped to [0, size - 1.001] as
// edgesNmsMex does (in T's precision; the bound is compared in double).
template <typename T>
T interpolate(const T* e, int64_t h, int64_t w, T x, T y) {
  const double x_max = static_cast<double>(w) - 1.001, y_max = static_cast<double>(h) - 1.001;
  x = x < 0 ? T(0) : (static_cast<double>(x) > x_max ? static_cast<T>(x_max) : x);
  y = y < 0 ? T(0) : (static_cast<double>(y) > y_max ? static_cast<T>(y_max) : y);
  const int64_t x0 = static_cast<int64_t>(x), y0 = static_cast<int64_t>(y);
  const int64_t x1 = x0 + 1, y1 = y0 + 1;
  const T dx0 = x - static_cast<T>(x0), dy0 = y - static_cast<T>(y0);
  const T dx1 = T(1) - dx0, dy1 = T(1) - dy0;
  return e[y0 * w + x0] * dx1 * dy1 + e[y0 * w + x1] * dx0 * dy1 + e[y1 * w + x0] * dx1 * dy0 +
         e[y1 * w + x1] * dx0 * dy0;
}

template <typename T>
void suppress(const T* e, const T* o, T* out, int64_t h, int64_t w, int64_t r, int64_t s,
              T m) {
  at::parallel_for(0, h, h * w < kParallelPixels ? h : 1, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        const int64_t i = y * w + x;
        out[i] = e[i];
        if (e[i] == 0) continue;
        const T v = e[i] * m;
        const T c = static_cast<T>(std::cos(static_cast<double>(o[i])));
        const T sn = static_cast<T>(std::sin(static_cast<double>(o[i])));
        for (int64_t d = -r; d <= r; ++d) {
          if (d == 0) continue;
          const T dd = static_cast<T>(d);
          if (v < interpolate(e, h, w, static_cast<T>(x) + dd * c, static_cast<T>(y) + dd * sn)) {
            out[i] = 0;
            break;
          }
        }
      }
    }
  });
  // Fade out the `s` pixels nearest each side (noisy estimates near the image boundary).
  s = std::min({s, w / 2, h / 2});
  for (int64_t x = 0; x < s; ++x) {
    const T f = static_cast<T>(x) / static_cast<T>(s);
    for (int64_t y = 0; y < h; ++y) {
      out[y * w + x] *= f;
      out[y * w + w - 1 - x] *= f;
    }
  }
  for (int64_t y = 0; y < s; ++y) {
    const T f = static_cast<T>(y) / static_cast<T>(s);
    for (int64_t x = 0; x < w; ++x) {
      out[y * w + x] *= f;
      out[(h - 1 - y) * w + x] *= f;
    }
  }
}

at::Tensor edge_nms(const at::Tensor& edges, const at::Tensor& orientation, int64_t radius,
                    int64_t border, double multiplier) {
  const char* op = "edge_nms";
  check_floating(op, "edges", edges);
  check_floating(op, "orientation", orientation);
  TORCH_CHECK_VALUE(edges.dim() == 2, op, ": edges must be H x W, got ", edges.dim(), "-D");
  TORCH_CHECK_VALUE(orientation.sizes() == edges.sizes(), op,
                    ": orientation must have the shape of edges ", edges.sizes(), ", got ",
                    orientation.sizes());
  TORCH_CHECK_VALUE(orientation.scalar_type() == edges.scalar_type(), op,
                    ": orientation must have the dtype of edges (",
                    dtype_name(edges.scalar_type()), "), got ",
                    dtype_name(orientation.scalar_type()));
  const int64_t h = edges.size(0), w = edges.size(1);
  TORCH_CHECK_VALUE(h >= 2 && w >= 2, op, ": edges must be at least 2 x 2, got ", h, " x ", w);
  TORCH_CHECK_VALUE(radius >= 0 && radius <= kInt32Max, op,
                    ": radius must be >= 0, got ", radius);
  TORCH_CHECK_VALUE(border >= 0, op, ": border must be >= 0, got ", border);
  TORCH_CHECK_VALUE(std::isfinite(multiplier), op, ": multiplier must be finite, got ",
                    multiplier);
  check_finite(op, "edges", edges);
  check_finite(op, "orientation", orientation);
  const at::Tensor e = edges.contiguous(), o = orientation.contiguous();
  at::Tensor out = at::empty_like(e);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "edge_nms", [&] {
    suppress<scalar_t>(e.const_data_ptr<scalar_t>(), o.const_data_ptr<scalar_t>(),
                       out.data_ptr<scalar_t>(), h, w, radius, border,
                       static_cast<scalar_t>(multiplier));
  });
  return out;
}

// ---- boundary correspondence ------------------------------------------------------------

double diagonal(int64_t h, int64_t w) {
  return std::sqrt(static_cast<double>(h) * h + static_cast<double>(w) * w);
}

void check_max_dist(const char* op, double max_dist) {
  TORCH_CHECK_VALUE(std::isfinite(max_dist) && max_dist >= 0 && max_dist <= 1, op,
                    ": max_dist (a fraction of the image diagonal) must be in [0, 1], got ",
                    max_dist);
}

// Row-major indices of the nonzero pixels of an h x w map (row stride `stride`).
void nonzero_pixels(const uint8_t* map, int64_t h, int64_t w, int64_t stride,
                    std::vector<int32_t>& out) {
  out.clear();
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* row = map + y * stride;
    for (int64_t x = 0; x < w; ++x) {
      if (row[x]) out.push_back(static_cast<int32_t>(y * w + x));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> correspond_pixels(const at::Tensor& pred, const at::Tensor& gt,
                                                     double max_dist) {
  const char* op = "correspond_pixels";
  check_binary(op, "pred", pred);
  check_binary(op, "gt", gt);
  TORCH_CHECK_VALUE(pred.dim() == 2, op, ": pred must be H x W, got ", pred.dim(), "-D");
  TORCH_CHECK_VALUE(gt.sizes() == pred.sizes(), op, ": gt must have the shape of pred ",
                    pred.sizes(), ", got ", gt.sizes());
  check_max_dist(op, max_dist);
  const int64_t h = pred.size(0), w = pred.size(1);
  check_pixels(op, "pred", h, w);
  at::Tensor match_pred = at::full({h, w}, -1, at::kLong);
  at::Tensor match_gt = at::full({h, w}, -1, at::kLong);
  if (h == 0 || w == 0) return {match_pred, match_gt};
  const at::Tensor p = pred.contiguous(), g = gt.contiguous();
  const auto offsets = edges::match_offsets(max_dist * diagonal(h, w), h, w);
  const edges::GroundTruthGrid grid(static_cast<const uint8_t*>(g.const_data_ptr()), h, w, w,
                                    offsets);
  std::vector<int32_t> pixels;
  nonzero_pixels(static_cast<const uint8_t*>(p.const_data_ptr()), h, w, w, pixels);
  edges::Matcher matcher;
  matcher.match(pixels, grid);
  int64_t* mp = match_pred.data_ptr<int64_t>();
  int64_t* mg = match_gt.data_ptr<int64_t>();
  for (size_t i = 0; i < pixels.size(); ++i) {
    const int32_t j = matcher.mate_pred[i];
    if (j >= 0) {
      mp[pixels[i]] = grid.pixel[j];
      mg[grid.pixel[j]] = pixels[i];
    }
  }
  return {match_pred, match_gt};
}

// ---- one image of the benchmark -----------------------------------------------------------

// cntR, sumR, cntP, sumP of one threshold (edgesEvalImg): recall counts are summed over the
// annotators, a predicted pixel is a hit when it matches any annotator.
template <typename T>
void count_threshold(const T* e, int64_t h, int64_t w, double threshold, bool thin_edges,
                     const std::vector<edges::GroundTruthGrid>& grids, int64_t* counts,
                     std::vector<uint8_t>& padded, edges::ThinningScratch& scratch,
                     std::vector<int32_t>& pixels, std::vector<uint8_t>& hit,
                     edges::Matcher& matcher) {
  const double t = std::max(kEps, threshold);
  padded.assign(static_cast<size_t>((h + 2) * (w + 2)), 0);
  for (int64_t y = 0; y < h; ++y) {
    uint8_t* row = padded.data() + (y + 1) * (w + 2) + 1;
    for (int64_t x = 0; x < w; ++x) row[x] = static_cast<double>(e[y * w + x]) >= t;
  }
  if (thin_edges) edges::thin_padded(padded.data(), h, w, scratch);
  nonzero_pixels(padded.data() + (w + 2) + 1, h, w, w + 2, pixels);
  hit.assign(pixels.size(), 0);
  int64_t matched_gt = 0, all_gt = 0;
  for (const auto& grid : grids) {
    matched_gt += matcher.match(pixels, grid);
    all_gt += grid.size();
    for (size_t i = 0; i < pixels.size(); ++i) hit[i] |= matcher.mate_pred[i] >= 0;
  }
  int64_t hits = 0;
  for (const uint8_t v : hit) hits += v;
  counts[0] = matched_gt;
  counts[1] = all_gt;
  counts[2] = hits;
  counts[3] = static_cast<int64_t>(pixels.size());
}

at::Tensor boundary_pr_counts(const at::Tensor& edges, const at::Tensor& ground_truth,
                              const at::Tensor& thresholds, double max_dist, bool thin_edges) {
  const char* op = "boundary_pr_counts";
  check_floating(op, "edges", edges);
  check_binary(op, "ground_truth", ground_truth);
  TORCH_CHECK_VALUE(thresholds.scalar_type() == at::kDouble, op,
                    ": thresholds must be a float64 tensor, got ",
                    dtype_name(thresholds.scalar_type()));
  check_cpu(op, "thresholds", thresholds);
  TORCH_CHECK_VALUE(edges.dim() == 2, op, ": edges must be H x W, got ", edges.dim(), "-D");
  TORCH_CHECK_VALUE(ground_truth.dim() == 3 && ground_truth.sizes().slice(1) == edges.sizes(),
                    op, ": ground_truth must be A x ", edges.size(0), " x ", edges.size(1),
                    " (annotators x the shape of edges), got ", ground_truth.sizes());
  TORCH_CHECK_VALUE(thresholds.dim() == 1, op, ": thresholds must be 1-D, got ",
                    thresholds.dim(), "-D");
  check_max_dist(op, max_dist);
  check_finite(op, "edges", edges);
  check_finite(op, "thresholds", thresholds);
  const int64_t h = edges.size(0), w = edges.size(1), k = thresholds.size(0);
  check_pixels(op, "edges", h + 2, w + 2);
  at::Tensor counts = at::zeros({k, 4}, at::kLong);
  if (k == 0 || h == 0 || w == 0) return counts;
  const at::Tensor e = edges.contiguous(), gt = ground_truth.contiguous();
  const at::Tensor t = thresholds.contiguous();
  const double* thr = t.const_data_ptr<double>();
  const auto offsets = edges::match_offsets(max_dist * diagonal(h, w), h, w);
  std::vector<edges::GroundTruthGrid> grids;
  const auto* gt_data = static_cast<const uint8_t*>(gt.const_data_ptr());
  for (int64_t a = 0; a < gt.size(0); ++a) grids.emplace_back(gt_data + a * h * w, h, w, w, offsets);
  int64_t* out = counts.data_ptr<int64_t>();
  // Low thresholds cost the most: interleave low and high ones so that the contiguous
  // ranges of parallel_for get similar work.
  const auto threshold_index = [k](int64_t i) { return i % 2 == 0 ? i / 2 : k - 1 - i / 2; };
  const int64_t grain = k * h * w < kParallelPixels ? k : 1;
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "boundary_pr_counts", [&] {
    const scalar_t* values = e.const_data_ptr<scalar_t>();
    at::parallel_for(0, k, grain, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> padded, hit;
      std::vector<int32_t> pixels;
      edges::ThinningScratch scratch;
      edges::Matcher matcher;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = threshold_index(i);
        count_threshold(values, h, w, thr[j], thin_edges, grids, out + 4 * j, padded, scratch,
                        pixels, hit, matcher);
      }
    });
  });
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(sam_lightning, CPU, m) {
  m.impl("thin", &thin);
  m.impl("edge_nms", &edge_nms);
  m.impl("correspond_pixels", &correspond_pixels);
  m.impl("boundary_pr_counts", &boundary_pr_counts);
}

}  // namespace sam_lightning
