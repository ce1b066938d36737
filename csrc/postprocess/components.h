// Row runs and 8-connected components of one binary mask, labelled in OpenCV's order.
//
// A mask is scanned row by row for runs of pixels of one value (8 bytes at a time); each run
// is joined (union-find over run indices) with the runs of the row above that touch it
// (8-connectivity: columns [s, e) and [s', e') touch when s <= e' and s' <= e). Components are
// then numbered as OpenCV's block-based labelling (Spaghetti / BBDT, used by
// cv2.connectedComponents* for 8-connectivity) numbers them: by the first 2 x 2 pixel block
// that they touch, scanning block rows, then block columns. In 8-connectivity all pixels of a
// 2 x 2 block are neighbours, so no two components share their first block.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace sam_lightning {
namespace cc {

constexpr uint64_t kLowBits = 0x0101010101010101ULL;
constexpr uint64_t kHighBits = 0x8080808080808080ULL;

inline uint64_t load8(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Nonzero where a byte of v is zero; the lowest set bit marks the first zero byte.
inline uint64_t zero_bytes(uint64_t v) { return (v - kLowBits) & ~v & kHighBits; }

// First index in [x, w) whose byte is nonzero (Foreground) or zero (!Foreground), else w.
template <bool Foreground>
inline int64_t find(const uint8_t* p, int64_t x, int64_t w) {
  const auto hits = [](uint64_t v) { return Foreground ? v : zero_bytes(v); };
  for (; x + 32 <= w; x += 32) {
    const uint64_t a = hits(load8(p + x)), b = hits(load8(p + x + 8)),
                   c = hits(load8(p + x + 16)), d = hits(load8(p + x + 24));
    if (a | b | c | d) {
      if (a) return x + (__builtin_ctzll(a) >> 3);
      if (b) return x + 8 + (__builtin_ctzll(b) >> 3);
      if (c) return x + 16 + (__builtin_ctzll(c) >> 3);
      return x + 24 + (__builtin_ctzll(d) >> 3);
    }
  }
  for (; x + 8 <= w; x += 8) {
    const uint64_t v = hits(load8(p + x));
    if (v) return x + (__builtin_ctzll(v) >> 3);
  }
  for (; x < w; ++x) {
    if ((p[x] != 0) == Foreground) return x;
  }
  return w;
}

// Last index in [lo, hi) whose byte is nonzero, else -1.
inline int64_t find_last_nonzero(const uint8_t* p, int64_t lo, int64_t hi) {
  int64_t x = hi;
  for (; x - 8 >= lo; x -= 8) {
    const uint64_t v = load8(p + x - 8);
    if (v) return x - 8 + ((63 - __builtin_clzll(v)) >> 3);
  }
  for (; x > lo; --x) {
    if (p[x - 1]) return x - 1;
  }
  return -1;
}

// Scratch and result of labelling one mask; reused across masks by each thread.
struct Components {
  // Runs in raster order: row y holds runs [row_begin[y], row_begin[y + 1]).
  std::vector<int32_t> start, end;  // column range [start, end)
  std::vector<int64_t> row_begin;
  std::vector<int32_t> parent;     // union-find over runs, then each run's component
  std::vector<int64_t> size;       // pixels of each component, in label order
  int32_t num = 0;                 // number of components (OpenCV labels 1..num)

  int32_t root(int32_t r) {
    while (parent[r] != r) {
      parent[r] = parent[parent[r]];
      r = parent[r];
    }
    return r;
  }

  void join(int32_t a, int32_t b) {
    a = root(a);
    b = root(b);
    if (a < b) {
      parent[b] = a;
    } else {
      parent[a] = b;
    }
  }

  // Labels the pixels of value `Foreground` (nonzero) of an h x w mask whose rows start
  // `row_stride` bytes apart (columns contiguous).
  template <bool Foreground>
  void label(const uint8_t* mask, int64_t h, int64_t w, int64_t row_stride) {
    start.clear();
    end.clear();
    parent.clear();
    row_begin.assign(1, 0);
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* row = mask + y * row_stride;
      const int64_t first = static_cast<int64_t>(start.size());
      for (int64_t x = 0;;) {
        const int64_t s = find<Foreground>(row, x, w);
        if (s >= w) break;
        const int64_t e = find<!Foreground>(row, s + 1, w);
        start.push_back(static_cast<int32_t>(s));
        end.push_back(static_cast<int32_t>(e));
        parent.push_back(static_cast<int32_t>(parent.size()));
        x = e;
      }
      const int64_t last = static_cast<int64_t>(start.size());
      row_begin.push_back(last);
      if (y > 0) link(row_begin[y - 1], first, first, last);
    }
    number(h);
  }

 private:
  // Joins the runs [c0, c1) of a row with the touching runs [p0, p1) of the row above.
  void link(int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
    int64_t i = p0;
    for (int64_t c = c0; c < c1; ++c) {
      while (i < p1 && end[i] < start[c]) ++i;  // ends before c (and every later run) starts
      for (int64_t j = i; j < p1 && start[j] <= end[c]; ++j) {
        join(static_cast<int32_t>(c), static_cast<int32_t>(j));
      }
    }
  }

  // Numbers components in OpenCV's order; parent[r] becomes run r's component (0-based).
  void number(int64_t h) {
    const int64_t runs = static_cast<int64_t>(start.size());
    for (int64_t r = 0; r < runs; ++r) parent[r] = root(static_cast<int32_t>(r));
    component_of_root.assign(runs, -1);
    size.clear();
    num = 0;
    const auto visit = [&](int64_t r) {
      int32_t& label = component_of_root[parent[r]];
      if (label < 0) {
        label = num++;
        size.push_back(0);
      }
    };
    for (int64_t y = 0; y < h; y += 2) {  // block rows: rows y and y + 1, merged by block
      int64_t a = row_begin[y], a_end = row_begin[y + 1];
      int64_t b = a_end, b_end = y + 1 < h ? row_begin[y + 2] : a_end;
      while (a < a_end || b < b_end) {
        if (b >= b_end || (a < a_end && start[a] / 2 <= start[b] / 2)) {
          visit(a++);
        } else {
          visit(b++);
        }
      }
    }
    for (int64_t r = 0; r < runs; ++r) {
      parent[r] = component_of_root[parent[r]];
      size[parent[r]] += end[r] - start[r];
    }
  }

  std::vector<int32_t> component_of_root;
};

}  // namespace cc
}  // namespace sam_lightning
