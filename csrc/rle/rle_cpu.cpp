// CPU kernels of the sam_lightning::rle_* operators (schemas in csrc/ops.cpp).
//
// A batch of RLE strings travels as `chars` (uint8, all strings concatenated) and
// `offsets` (int64, N + 1: string i is chars[offsets[i]:offsets[i + 1]]); sizes as int64
// N x 2 [height, width]. Work is parallel over RLEs; problems are collected per RLE and the
// one with the lowest index is raised as ValueError, so messages do not depend on timing.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "rle/rle.h"

namespace sam_lightning {
namespace {

using rle::Counts;

// A validated batch of strings (holds contiguous copies alive).
struct Strings {
  at::Tensor chars, offsets;
  int64_t size() const { return offsets.numel() - 1; }
  const uint8_t* data(int64_t i) const {
    return chars.const_data_ptr<uint8_t>() + offsets.const_data_ptr<int64_t>()[i];
  }
  int64_t length(int64_t i) const {
    const int64_t* o = offsets.const_data_ptr<int64_t>();
    return o[i + 1] - o[i];
  }
};

// Checks N + 1 offsets into a 1-D tensor of `total` elements; returns a contiguous copy.
at::Tensor check_offsets(const char* op, const at::Tensor& offsets, int64_t total) {
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.scalar_type() == at::kLong &&
                        offsets.numel() >= 1,
                    op, ": offsets must be a 1-D int64 tensor of length N + 1, got ",
                    offsets.dim(), "-D ", offsets.scalar_type(), " with ", offsets.numel(),
                    " elements");
  at::Tensor contiguous = offsets.contiguous();
  const int64_t* o = contiguous.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < contiguous.numel(); ++i) {
    TORCH_CHECK_VALUE(o[i] >= 0 && o[i] <= total, op, ": offsets[", i, "] = ", o[i],
                      " is outside [0, ", total, "]");
    TORCH_CHECK_VALUE(i == 0 || o[i] >= o[i - 1], op, ": offsets must be non-decreasing, got ",
                      "offsets[", i - 1, "] = ", o[i - 1], " > offsets[", i, "] = ", o[i]);
  }
  return contiguous;
}

Strings check_strings(const char* op, const at::Tensor& chars, const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(chars.dim() == 1 && chars.scalar_type() == at::kByte, op,
                    ": chars must be a 1-D uint8 tensor, got ", chars.dim(), "-D ",
                    chars.scalar_type());
  return {chars.contiguous(), check_offsets(op, offsets, chars.numel())};
}

// Checks an N x 2 int64 sizes tensor and every size in it; returns a contiguous copy.
at::Tensor check_sizes(const char* op, const char* label, const at::Tensor& sizes, int64_t n) {
  TORCH_CHECK_VALUE(sizes.dim() == 2 && sizes.size(0) == n && sizes.size(1) == 2 &&
                        sizes.scalar_type() == at::kLong,
                    op, ": sizes must be an int64 tensor of shape (", n, ", 2), got shape ",
                    sizes.sizes(), " and dtype ", sizes.scalar_type());
  at::Tensor contiguous = sizes.contiguous();
  const int64_t* hw = contiguous.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const std::string problem = rle::check_size(hw[2 * i], hw[2 * i + 1]);
    TORCH_CHECK_VALUE(problem.empty(), label, " ", i, ": ", problem);
  }
  return contiguous;
}

// Work (pixels or counts touched) below which a batch runs on the calling thread: waking
// the thread pool would cost more than it saves, far more when other processes keep the
// cores busy.
constexpr int64_t kParallelWork = int64_t{1} << 20;
// The same for counts strings: parsing costs ~2 ns per character, so 64K characters
// already gain from a second thread.
constexpr int64_t kParallelChars = int64_t{1} << 16;

// Grain size for at::parallel_for over n items that do `work` in total.
int64_t grain(int64_t n, int64_t work, int64_t threshold = kParallelWork) {
  return work < threshold ? std::max<int64_t>(n, 1) : 1;
}

// Runs item(i) -> problem ("" when fine), in parallel when `work` is large enough; raises
// the lowest-index problem.
template <typename Item>
void for_each_item(int64_t n, int64_t work, int64_t threshold, const char* label,
                   const Item& item) {
  std::vector<std::string> problems(n);
  at::parallel_for(0, n, grain(n, work, threshold), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) problems[i] = item(i);
  });
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(problems[i].empty(), label, " ", i, ": ", problems[i]);
  }
}

std::string parse(const Strings& s, int64_t i, int64_t h, int64_t w, Counts& counts) {
  std::string problem = rle::decompress(s.data(i), s.length(i), counts);
  return problem.empty() ? rle::check_total(counts, h, w) : problem;
}

// Parses and validates every RLE of a batch against its size.
std::vector<Counts> parse_all(const Strings& s, const at::Tensor& sizes, const char* label) {
  std::vector<Counts> all(s.size());
  const int64_t* hw = sizes.const_data_ptr<int64_t>();
  for_each_item(s.size(), s.chars.numel(), kParallelChars, label,
                [&](int64_t i) { return parse(s, i, hw[2 * i], hw[2 * i + 1], all[i]); });
  return all;
}

// Concatenates per-RLE strings into (chars, offsets).
std::tuple<at::Tensor, at::Tensor> join(const std::vector<std::string>& strings) {
  const int64_t n = static_cast<int64_t>(strings.size());
  at::Tensor offsets = at::empty({n + 1}, at::kLong);
  int64_t* o = offsets.data_ptr<int64_t>();
  o[0] = 0;
  for (int64_t i = 0; i < n; ++i) o[i + 1] = o[i] + static_cast<int64_t>(strings[i].size());
  at::Tensor chars = at::empty({o[n]}, at::kByte);
  uint8_t* dst = chars.data_ptr<uint8_t>();
  at::parallel_for(0, n, grain(n, o[n]), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (!strings[i].empty()) std::memcpy(dst + o[i], strings[i].data(), strings[i].size());
    }
  });
  return {chars, offsets};
}

std::tuple<at::Tensor, at::Tensor> rle_encode(const at::Tensor& masks) {
  TORCH_CHECK_VALUE(masks.dim() == 3, "rle_encode: masks must be N x H x W, got ", masks.dim(),
                    "-D");
  TORCH_CHECK_VALUE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
                    "rle_encode: masks must be bool or uint8, got ", masks.scalar_type());
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  const std::string problem = rle::check_size(h, w);
  TORCH_CHECK_VALUE(problem.empty(), "rle_encode: masks of ", problem);
  const auto* base = static_cast<const uint8_t*>(masks.const_data_ptr());
  std::vector<std::string> strings(n);
  at::parallel_for(0, n, grain(n, n * h * w), [&](int64_t begin, int64_t end) {
    static thread_local rle::EncodeScratch scratch;
    static thread_local std::vector<char> text;  // grows only, like scratch
    for (int64_t i = begin; i < end; ++i) {
      const rle::MaskView view{base + i * masks.stride(0), h, w, masks.stride(1),
                               masks.stride(2)};
      const int64_t num_counts = rle::encode(view, scratch);
      const auto capacity = static_cast<size_t>(num_counts * rle::kMaxCharsPerCount);
      if (text.size() < capacity) text.resize(capacity);
      strings[i].assign(text.data(),
                        rle::compress(scratch.counts.data(), num_counts, text.data()));
    }
  });
  return join(strings);
}

at::Tensor rle_decode(const at::Tensor& chars, const at::Tensor& offsets, int64_t h,
                      int64_t w) {
  const Strings s = check_strings("rle_decode", chars, offsets);
  const std::string problem = rle::check_size(h, w);
  TORCH_CHECK_VALUE(problem.empty(), "rle_decode: ", problem);
  at::Tensor masks = at::empty({s.size(), h, w}, at::kByte);
  uint8_t* out = masks.data_ptr<uint8_t>();
  for_each_item(s.size(), s.size() * h * w, kParallelWork, "RLE", [&](int64_t i) {
    static thread_local Counts counts;
    std::string problem = parse(s, i, h, w, counts);
    if (problem.empty()) rle::decode_row_major(counts, h, w, out + i * h * w);
    return problem;
  });
  return masks;
}

at::Tensor rle_area(const at::Tensor& chars, const at::Tensor& offsets, const at::Tensor& sizes) {
  const Strings s = check_strings("rle_area", chars, offsets);
  const at::Tensor hw = check_sizes("rle_area", "RLE", sizes, s.size());
  at::Tensor areas = at::empty({s.size()}, at::kLong);
  int64_t* out = areas.data_ptr<int64_t>();
  const int64_t* size = hw.const_data_ptr<int64_t>();
  for_each_item(s.size(), s.chars.numel(), kParallelChars, "RLE", [&](int64_t i) {
    uint64_t area = 0;
    std::string problem =
        rle::area_of_string(s.data(i), s.length(i), size[2 * i], size[2 * i + 1], area);
    out[i] = static_cast<int64_t>(area);
    return problem;
  });
  return areas;
}

at::Tensor rle_to_bbox(const at::Tensor& chars, const at::Tensor& offsets,
                       const at::Tensor& sizes) {
  const Strings s = check_strings("rle_to_bbox", chars, offsets);
  const at::Tensor hw = check_sizes("rle_to_bbox", "RLE", sizes, s.size());
  at::Tensor boxes = at::zeros({s.size(), 4}, at::kDouble);
  double* out = boxes.data_ptr<double>();
  const int64_t* size = hw.const_data_ptr<int64_t>();
  for_each_item(s.size(), s.chars.numel(), kParallelChars, "RLE", [&](int64_t i) {
    return rle::bbox_of_string(s.data(i), s.length(i), size[2 * i], size[2 * i + 1],
                               out + 4 * i);
  });
  return boxes;
}

bool same_size(const int64_t* a, const int64_t* b) { return a[0] == b[0] && a[1] == b[1]; }

void check_same_sizes(const char* op, const char* label, const int64_t* sizes, int64_t n,
                      const char* ref_label, const int64_t* ref) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(same_size(sizes + 2 * i, ref), op, ": ", label, " ", i, " has size [",
                      sizes[2 * i], ", ", sizes[2 * i + 1], "] but ", ref_label,
                      " 0 has size [", ref[0], ", ", ref[1], "]");
  }
}

at::Tensor rle_iou(const at::Tensor& dt_chars, const at::Tensor& dt_offsets,
                   const at::Tensor& dt_sizes, const at::Tensor& gt_chars,
                   const at::Tensor& gt_offsets, const at::Tensor& gt_sizes,
                   const at::Tensor& iscrowd) {
  const Strings dt = check_strings("rle_iou", dt_chars, dt_offsets);
  const Strings gt = check_strings("rle_iou", gt_chars, gt_offsets);
  const int64_t num_dt = dt.size(), num_gt = gt.size();
  TORCH_CHECK_VALUE(iscrowd.dim() == 1 && iscrowd.numel() == num_gt &&
                        (iscrowd.scalar_type() == at::kBool || iscrowd.scalar_type() == at::kByte),
                    "rle_iou: iscrowd must be a 1-D bool or uint8 tensor with one flag per gt "
                    "RLE (", num_gt, "), got shape ", iscrowd.sizes(), " and dtype ",
                    iscrowd.scalar_type());
  const at::Tensor dt_hw = check_sizes("rle_iou", "dt RLE", dt_sizes, num_dt);
  const at::Tensor gt_hw = check_sizes("rle_iou", "gt RLE", gt_sizes, num_gt);
  const int64_t* dsz = dt_hw.const_data_ptr<int64_t>();
  const int64_t* gsz = gt_hw.const_data_ptr<int64_t>();
  if (num_dt > 0 && num_gt > 0) {
    check_same_sizes("rle_iou", "dt RLE", dsz, num_dt, "gt RLE", gsz);
    check_same_sizes("rle_iou", "gt RLE", gsz, num_gt, "dt RLE", dsz);
  }
  std::vector<Counts> dts = parse_all(dt, dt_hw, "dt RLE");
  std::vector<Counts> gts = parse_all(gt, gt_hw, "gt RLE");
  std::vector<double> dt_boxes(4 * num_dt), gt_boxes(4 * num_gt);
  for (int64_t d = 0; d < num_dt; ++d) {
    rle::to_bbox(dts[d], dsz[2 * d], dsz[2 * d + 1], &dt_boxes[4 * d]);
  }
  for (int64_t g = 0; g < num_gt; ++g) {
    rle::to_bbox(gts[g], gsz[2 * g], gsz[2 * g + 1], &gt_boxes[4 * g]);
  }
  // Boxes come from the counts as given (as in pycocotools), the walk needs canonical ones.
  for (Counts& counts : dts) rle::canonicalize(counts);
  for (Counts& counts : gts) rle::canonicalize(counts);
  const at::Tensor crowd = iscrowd.contiguous();
  const auto* is_crowd = static_cast<const uint8_t*>(crowd.const_data_ptr());
  at::Tensor ious = at::zeros({num_dt, num_gt}, at::kDouble);
  double* out = ious.data_ptr<double>();
  const int64_t work = dt.chars.numel() * num_gt + gt.chars.numel() * num_dt;
  at::parallel_for(0, num_dt * num_gt, grain(num_dt * num_gt, work), [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t d = pair / num_gt, g = pair % num_gt;
      if (rle::boxes_overlap(&dt_boxes[4 * d], &gt_boxes[4 * g])) {
        out[pair] = rle::iou(dts[d], gts[g], is_crowd[g] != 0);
      }
    }
  });
  return ious;
}

at::Tensor rle_merge(const at::Tensor& chars, const at::Tensor& offsets, const at::Tensor& sizes,
                     bool intersect) {
  const Strings s = check_strings("rle_merge", chars, offsets);
  TORCH_CHECK_VALUE(s.size() >= 1, "rle_merge: needs at least one RLE");
  const at::Tensor hw = check_sizes("rle_merge", "RLE", sizes, s.size());
  const int64_t* size = hw.const_data_ptr<int64_t>();
  check_same_sizes("rle_merge", "RLE", size, s.size(), "RLE", size);
  std::vector<Counts> all = parse_all(s, hw, "RLE");
  for (Counts& counts : all) rle::canonicalize(counts);
  Counts merged = all[0], next;
  for (size_t i = 1; i < all.size(); ++i) {
    rle::merge(merged, all[i], intersect, next);
    merged.swap(next);
  }
  std::string text;
  rle::compress(merged.data(), static_cast<int64_t>(merged.size()), text);
  at::Tensor out = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  if (!text.empty()) std::memcpy(out.data_ptr<uint8_t>(), text.data(), text.size());
  return out;
}

std::tuple<at::Tensor, at::Tensor> rle_compress(const at::Tensor& counts,
                                                const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.scalar_type() == at::kLong,
                    "rle_compress: counts must be a 1-D int64 tensor, got ", counts.dim(), "-D ",
                    counts.scalar_type());
  const at::Tensor bounds = check_offsets("rle_compress", offsets, counts.numel());
  const at::Tensor values = counts.contiguous();
  const int64_t* v = values.const_data_ptr<int64_t>();
  const int64_t* o = bounds.const_data_ptr<int64_t>();
  const int64_t n = bounds.numel() - 1;
  std::vector<std::string> strings(n);
  for_each_item(n, values.numel(), kParallelWork, "RLE", [&](int64_t i) -> std::string {
    static thread_local Counts narrow;
    narrow.clear();
    for (int64_t k = o[i]; k < o[i + 1]; ++k) {
      if (v[k] < 0 || v[k] > static_cast<int64_t>(UINT32_MAX)) {
        const std::string where = std::to_string(v[k]) + " at index " + std::to_string(k - o[i]);
        return v[k] < 0 ? "negative count " + where : "count " + where + " overflows 32 bits";
      }
      narrow.push_back(static_cast<rle::Count>(v[k]));
    }
    rle::compress(narrow.data(), static_cast<int64_t>(narrow.size()), strings[i]);
    return {};
  });
  return join(strings);
}

std::tuple<at::Tensor, at::Tensor> rle_decompress(const at::Tensor& chars,
                                                  const at::Tensor& offsets) {
  const Strings s = check_strings("rle_decompress", chars, offsets);
  std::vector<Counts> all(s.size());
  for_each_item(s.size(), s.chars.numel(), kParallelChars, "RLE", [&](int64_t i) {
    return rle::decompress(s.data(i), s.length(i), all[i]);
  });
  at::Tensor counts_offsets = at::empty({s.size() + 1}, at::kLong);
  int64_t* o = counts_offsets.data_ptr<int64_t>();
  o[0] = 0;
  for (int64_t i = 0; i < s.size(); ++i) o[i + 1] = o[i] + static_cast<int64_t>(all[i].size());
  at::Tensor counts = at::empty({o[s.size()]}, at::kLong);
  int64_t* dst = counts.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.size(); ++i) std::copy(all[i].begin(), all[i].end(), dst + o[i]);
  return {counts, counts_offsets};
}

std::tuple<at::Tensor, at::Tensor> rle_select(const at::Tensor& chars, const at::Tensor& offsets,
                                              const at::Tensor& index) {
  const Strings s = check_strings("rle_select", chars, offsets);
  TORCH_CHECK_VALUE(index.dim() == 1 && index.scalar_type() == at::kLong,
                    "rle_select: index must be a 1-D int64 tensor, got ", index.dim(), "-D ",
                    index.scalar_type());
  const at::Tensor picked = index.contiguous();
  const int64_t* idx = picked.const_data_ptr<int64_t>();
  const int64_t n = picked.numel();
  at::Tensor new_offsets = at::empty({n + 1}, at::kLong);
  int64_t* o = new_offsets.data_ptr<int64_t>();
  o[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < s.size(), "rle_select: index[", i, "] = ", idx[i],
                      " is outside [0, ", s.size(), ")");
    o[i + 1] = o[i] + s.length(idx[i]);
  }
  at::Tensor out = at::empty({o[n]}, at::kByte);
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, n, grain(n, o[n]), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t length = o[i + 1] - o[i];
      if (length > 0) std::memcpy(dst + o[i], s.data(idx[i]), length);
    }
  });
  return {out, new_offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(sam_lightning, CPU, m) {
  m.impl("rle_encode", &rle_encode);
  m.impl("rle_decode", &rle_decode);
  m.impl("rle_area", &rle_area);
  m.impl("rle_to_bbox", &rle_to_bbox);
  m.impl("rle_iou", &rle_iou);
  m.impl("rle_merge", &rle_merge);
  m.impl("rle_compress", &rle_compress);
  m.impl("rle_decompress", &rle_decompress);
  m.impl("rle_select", &rle_select);
}

}  // namespace sam_lightning
