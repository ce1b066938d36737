// Morphological thinning with the semantics of scikit-image's `thin` (= MATLAB
// bwmorph(..., 'thin', Inf)): Guo and Hall's parallel two-subiteration algorithm (Comm. ACM
// 32(3), 1989), repeated until an iteration deletes nothing. Within a subiteration every
// deletion is decided on the image as it was before the subiteration; pixels outside the
// image are background.
//
// The deletion tables are derived from the paper's conditions G1, G2 and G3 (first
// subiteration) or G3' (second). Unlike a whole-image pass per subiteration, only pixels
// whose neighbourhood changed since they were last examined are examined again (a pixel's
// decision depends on its 3 x 3 neighbourhood only), which gives the same result.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace sam_lightning {
namespace edges {

// Neighbour bit i - 1 is x_i of the paper: x1 = east, then counter-clockwise (x2 = north-east,
// x3 = north, ..., x8 = south-east), as in the mask [[8, 4, 2], [16, 0, 1], [32, 64, 128]].
inline bool guo_hall_deletes(int code, int subiteration) {
  const auto x = [code](int i) { return (code >> ((i - 1) % 8)) & 1; };
  int crossings = 0, n1 = 0, n2 = 0;
  for (int k = 1; k <= 4; ++k) {
    crossings += !x(2 * k - 1) && (x(2 * k) || x(2 * k + 1));  // G1: X_H = 1
    n1 += x(2 * k - 1) || x(2 * k);
    n2 += x(2 * k) || x(2 * k + 1);
  }
  const int n = n1 < n2 ? n1 : n2;  // G2: 2 <= min(n1, n2) <= 3
  const bool g3 = subiteration == 0 ? !((x(2) || x(3) || !x(8)) && x(1))
                                    : !((x(6) || x(7) || !x(4)) && x(5));
  return crossings == 1 && n >= 2 && n <= 3 && g3;
}

struct ThinningTables {
  std::array<std::array<uint8_t, 256>, 2> deletes;
  ThinningTables() {
    for (int s = 0; s < 2; ++s) {
      for (int code = 0; code < 256; ++code) deletes[s][code] = guo_hall_deletes(code, s);
    }
  }
};

inline const ThinningTables& thinning_tables() {
  static const ThinningTables tables;
  return tables;
}

// Scratch space of thin_padded, reusable across images.
struct ThinningScratch {
  std::vector<uint8_t> queued;  // bit s: the pixel is in dirty[s]
  std::array<std::vector<int32_t>, 2> dirty;
  std::vector<int32_t> deleted;
};

// Thins in place an image of 0/1 bytes stored with a one-pixel background frame:
// (h + 2) x (w + 2) bytes, row stride w + 2, the frame all zeros.
inline void thin_padded(uint8_t* image, int64_t h, int64_t w, ThinningScratch& scratch) {
  const auto& tables = thinning_tables().deletes;
  const int64_t stride = w + 2;
  const int32_t neighbours[8] = {
      1, static_cast<int32_t>(1 - stride), static_cast<int32_t>(-stride),
      static_cast<int32_t>(-stride - 1), -1, static_cast<int32_t>(stride - 1),
      static_cast<int32_t>(stride), static_cast<int32_t>(stride + 1)};
  const auto code = [&](int64_t i) {
    int c = 0;
    for (int b = 0; b < 8; ++b) c |= image[i + neighbours[b]] << b;
    return c;
  };
  scratch.queued.assign(static_cast<size_t>((h + 2) * stride), 0);
  for (auto& list : scratch.dirty) list.clear();
  for (int64_t y = 1; y <= h; ++y) {
    for (int64_t i = y * stride + 1, end = i + w; i < end; ++i) {
      if (image[i] && code(i) != 255) {  // interior pixels are never deleted (X_H = 0)
        scratch.dirty[0].push_back(static_cast<int32_t>(i));
        scratch.dirty[1].push_back(static_cast<int32_t>(i));
        scratch.queued[i] = 3;
      }
    }
  }
  bool changed = true;
  while (changed) {
    changed = false;
    for (int s = 0; s < 2; ++s) {
      scratch.deleted.clear();
      for (const int32_t i : scratch.dirty[s]) {
        scratch.queued[i] &= static_cast<uint8_t>(~(1 << s));
        if (image[i] && tables[s][code(i)]) scratch.deleted.push_back(i);
      }
      scratch.dirty[s].clear();
      for (const int32_t i : scratch.deleted) image[i] = 0;
      for (const int32_t i : scratch.deleted) {
        for (const int32_t offset : neighbours) {
          const int32_t j = i + offset;
          if (!image[j]) continue;
          for (int t = 0; t < 2; ++t) {
            if (!(scratch.queued[j] & (1 << t))) {
              scratch.queued[j] |= static_cast<uint8_t>(1 << t);
              scratch.dirty[t].push_back(j);
            }
          }
        }
      }
      changed |= !scratch.deleted.empty();
    }
  }
}

}  // namespace edges
}  // namespace sam_lightning
